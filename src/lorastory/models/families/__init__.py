"""Model families that bring their own functions, one module each, registered by :mod:`lorastory.models.registry`."""

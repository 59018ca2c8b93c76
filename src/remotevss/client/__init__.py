"""remotevss client side: drive an FSRVP server."""

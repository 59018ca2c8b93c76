"""remotevss: MS-FSRVP (File Server Remote VSS Protocol) for Linux file servers."""

__version__ = "0.1.0"

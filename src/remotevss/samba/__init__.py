"""Samba integration: what smbd hands us (npa), where it looks (pipedir), its shares."""

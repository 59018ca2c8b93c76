"""What the agent and the Samba integration both need about shares, below both:
looking a share name up (``table``) and exposing snapshot shares (``exposer``).
Why here: samba/ implements these interfaces and agent/ uses them; neither may
import the other's side (the import-linter contracts in pyproject.toml)."""

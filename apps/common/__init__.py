"""What every app shares: the domain error family and credential helpers. Imports no app."""

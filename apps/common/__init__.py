"""What every app shares: the domain error family, credential helpers and domain events
(how a lower app tells a higher one what happened). Imports no app."""

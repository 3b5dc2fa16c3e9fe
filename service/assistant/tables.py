"""ORM tables of this stage (filled in by its owner)."""

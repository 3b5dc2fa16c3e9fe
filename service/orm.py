"""The declarative base every ORM table derives from (kept apart from the engine so table
modules never import the code that migrates them)."""

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass

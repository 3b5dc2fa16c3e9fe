"""The declarative base every ORM table derives from (kept apart from the engine so table
modules never import the code that migrates them)."""

from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class IntegerId:
    """Mixin: the integer surrogate key of a log or queue table (the baseline migration's
    `_id`), first column like the migrations create it."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True, sort_order=-1)

"""Registers every ORM table with the shared metadata (read by the migrations)."""

from service.assistant import tables as _assistant  # noqa: F401
from service.catalog import tables as _catalog  # noqa: F401
from service.copy import tables as _copy  # noqa: F401
from service.llm import tables as _llm  # noqa: F401
from service.orm import Base
from service.retrieval import vector_index_tables as _vectors  # noqa: F401

metadata = Base.metadata

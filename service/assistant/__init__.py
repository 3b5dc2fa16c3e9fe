"""The chat shopping assistant: multi-turn, grounded in the catalogue, streamed.

`Assistant(rs).stream(message, conversation_id)` is the entry point; see chat.py.
"""

from service.assistant.store import ConversationNotFound

__all__ = ["ConversationNotFound"]

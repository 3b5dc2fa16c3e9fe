"""The LangChain pieces work on their own, in a chain a user writes themselves."""

from __future__ import annotations

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from service.assistant.lc import RecsmithChatModel, RecsmithRetriever, turn_prompt
from service.llm.base import LLM
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from tests.assistant.conftest import ScriptedLLM


def test_retriever_returns_documents_with_product_metadata(
    rs: Recsmith, catalogue_ids: set[str]
) -> None:
    r = RecsmithRetriever(rs=rs, k=3, filters=Filters(categories=["Kitchen"], max_price=60))
    docs = r.invoke("cast iron skillet")
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    for d in docs:
        m = d.metadata
        assert m["id"] in catalogue_ids and d.id == m["id"]
        assert m["category"] == "Kitchen" and m["price"] <= 60
        assert m["title"] in d.page_content and {"currency", "in_stock", "score"} <= set(m)
    assert "Skillet" in docs[0].metadata["title"]


def test_chat_model_generate_and_stream_carry_the_model_id(rs: Recsmith) -> None:
    llm = ScriptedLLM(rs.settings, "Hello there.")
    model = RecsmithChatModel(llm=llm, max_tokens=8)
    msg = model.invoke([SystemMessage("Be brief."), HumanMessage("hi")])
    assert isinstance(msg, AIMessage) and msg.content == "Hello there."
    assert msg.response_metadata["model_id"] == "scripted-test-model"
    assert llm.prompts[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    chunks = list(model.stream("hi"))
    assert len(chunks) > 2 and "".join(c.text for c in chunks) == "Hello there."
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.response_metadata["model_id"] == "scripted-test-model"


def test_the_assistant_prompt_composes_with_the_retriever(rs: Recsmith) -> None:
    llm = ScriptedLLM(rs.settings, "Try [1].")
    chain = (
        {"products": RecsmithRetriever(rs=rs, k=2), "question": RunnablePassthrough()}
        | turn_prompt
        | RecsmithChatModel(llm=llm)
        | StrOutputParser()
    )
    assert chain.invoke("olive wood bread board") == "Try [1]."
    user = llm.prompts[-1][1]["content"]  # type: ignore[index]
    assert "[1] <<<Olive Wood Bread Board" in user and "[3]" not in user


def test_a_user_chain_with_the_real_model(rs: Recsmith, real_llm: LLM) -> None:
    def fmt(docs: list[Document]) -> str:
        return "\n".join(f"- {d.metadata['title']} ({d.metadata['price']})" for d in docs)

    prompt = ChatPromptTemplate.from_messages(
        [("system", "You help shoppers."), ("human", "Products:\n{context}\n\n{question}")]
    )
    model = RecsmithChatModel(llm=real_llm, max_tokens=8)
    chain = (
        {"context": RecsmithRetriever(rs=rs, k=2) | fmt, "question": RunnablePassthrough()}
        | prompt
        | model
    )
    pieces = list(chain.stream("Which kettle is best for tea?"))
    assert pieces and "".join(p.text for p in pieces).strip()
    total = pieces[0]
    for p in pieces[1:]:
        total = total + p
    assert total.response_metadata["model_id"] == real_llm.model_id
    assert total.response_metadata["backend"] == "transformers"

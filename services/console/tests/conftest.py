"""Console test fixtures: a console app per test against the session's nats-server and
Mongo-wire server, isolated by its own database (`mongo_db`) and NATS namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient
from nats.js.api import ConsumerConfig, DeliverPolicy
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.clock import utcnow
from neobatch.common.contracts import Event, decode_event
from neobatch.common.ids import new_id
from neobatch.common.settings import CommonSettings
from neobatch.common.subjects import Namespace
from neobatch.console.app import create_app
from neobatch.console.keys.auth import OPERATOR_ROLE, PROJECT_ROLE, key_doc, new_api_key
from neobatch.console.settings import ConsoleSettings
from neobatch.sim.testing.waiting import wait_until

API_KEY = "nb-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The seeded operator key (NEOBATCH_OPERATOR_API_KEY): models and templates are created with it.
OPERATOR_KEY = "nb-test-operator-0123456789"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
MODEL_NAME = "Qwen2.5 7B Instruct"
MODEL_ID = "model-qwen2-5-7b-instruct"
TEMPLATE_NAME = "qwen-sim"
SAMPLE_JSONL = (
    b'{"custom_id":"r1","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}\n'
    b'{"custom_id":"r2","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"m","messages":[{"role":"user","content":"there"}]}}\n'
)


def template_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": TEMPLATE_NAME,
        "version": "v1.0.0",
        "status": "active",
        "spec": {
            "engine": {
                "type": "vllm",
                "image": "vllm/vllm-openai:latest",
                "serve_args": ["--trust-remote-code"],
                "command": ["python", "-m", "neobatch.sim.engine", "--port", "{port}"],
                "port": 8011,
            },
            "model_source": {"type": "huggingface", "uri": "Qwen/Qwen2.5-7B-Instruct"},
            "accelerator": {"type": "H100", "count": 1, "vram_gb": 80},
            "supported_endpoints": ["/v1/chat/completions"],
            "an_aibrix_field_we_ignore": True,
        },
    }
    body.update(overrides)
    return body


class ConsoleApi:
    """The console under test, its database (read directly for assertions) and its namespace.

    Test modules reach shared constants through this object: with importlib mode they
    cannot import conftest.
    """

    model_id = MODEL_ID
    template_name = TEMPLATE_NAME
    template_body = staticmethod(template_body)
    sample_jsonl = SAMPLE_JSONL
    auth = AUTH
    operator = OPERATOR

    def __init__(
        self, client: AsyncTestClient[Any], db: AsyncDatabase[Any], settings: ConsoleSettings
    ) -> None:
        self.client = client
        self.db = db
        self.settings = settings
        self.ns = Namespace(settings.common.namespace)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", AUTH)
        if body is not None:
            kwargs["json"] = body
        return await self.client.post(path, **kwargs)

    async def post_operator(self, path: str, body: Any = None) -> httpx.Response:
        """A POST with the operator key (catalog writes)."""
        return await self.post(path, body, headers=OPERATOR)

    async def get(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", AUTH)
        return await self.client.get(path, **kwargs)

    async def new_key(self, project: str, *, operator: bool = False) -> tuple[str, dict[str, str]]:
        """A new key of `project` stored as the admin CLI stores it: (key id, auth headers)."""
        key_id, api_key = new_id("key"), new_api_key()
        role = OPERATOR_ROLE if operator else PROJECT_ROLE
        doc = key_doc(key_id, api_key, project, f"{project} key", utcnow(), role=role)
        await self.db["api_keys"].insert_one(doc)
        return key_id, {"Authorization": f"Bearer {api_key}"}

    async def upload(
        self,
        content: bytes,
        filename: str = "batch.jsonl",
        purpose: str = "batch",
        headers: dict[str, str] = AUTH,
    ) -> httpx.Response:
        return await self.client.post(
            "/api/v1/files/upload",
            headers=headers,
            data={"purpose": purpose},
            files={"file": (filename, content, "application/octet-stream")},
        )

    async def ready_template(self) -> str:
        """A model and an active published template (made by the operator); the model id."""
        r = await self.post(
            "/api/v1/models", {"name": MODEL_NAME, "serving_name": "qwen-7b"}, headers=OPERATOR
        )
        assert r.status_code == 200, r.text
        r = await self.post(
            f"/api/v1/models/{MODEL_ID}/deployment-templates", template_body(), headers=OPERATOR
        )
        assert r.status_code == 200, r.text
        return MODEL_ID

    async def uploaded_file(
        self, content: bytes = SAMPLE_JSONL, headers: dict[str, str] = AUTH
    ) -> str:
        r = await self.upload(content, headers=headers)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    async def job_request(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input_dataset": await self.uploaded_file(),
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "name": "nightly",
            "model_id": MODEL_ID,
            "model_template_name": TEMPLATE_NAME,
        }
        body.update(overrides)
        return body

    async def count(self, collection: str, query: dict[str, Any] | None = None) -> int:
        return await self.db[collection].count_documents(query or {})

    async def next_event(self, kind: type[Event], timeout_seconds: float = 10) -> Event:
        """The first message on `kind`'s subject in the stream, as published by the relay."""
        nc = await nats.connect(self.settings.common.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(
                self.ns.subject(kind),
                stream=self.ns.stream_name,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )

            async def fetched() -> list[Any]:
                try:
                    return await sub.fetch(1, timeout=0.5)
                except nats.errors.TimeoutError:
                    return []

            messages = await wait_until(
                fetched, timeout_seconds, message=f"{kind.subject} published"
            )
            await messages[0].ack()
            return decode_event(messages[0].data, kind)
        finally:
            await nc.close()


@pytest.fixture
def console_settings(
    nats_url: str, mongo_url: str, mongo_db: AsyncDatabase[Any]
) -> ConsoleSettings:
    return ConsoleSettings(
        common=CommonSettings(
            nats_url=nats_url,
            mongo_url=mongo_url,
            db_name=mongo_db.name,
            namespace=f"t{uuid.uuid4().hex[:12]}",
        ),
        api_key=API_KEY,
        operator_api_key=OPERATOR_KEY,
    )


@pytest_asyncio.fixture
async def api(
    console_settings: ConsoleSettings, mongo_db: AsyncDatabase[Any]
) -> AsyncIterator[ConsoleApi]:
    async with AsyncTestClient(app=create_app(console_settings)) as client:
        yield ConsoleApi(client, mongo_db, console_settings)

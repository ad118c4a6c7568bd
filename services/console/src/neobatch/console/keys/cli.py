"""Admin CLI for API keys: `python -m neobatch.console.keys create|list|revoke`.

`create --project P` makes a project key; `create --operator` an operator key (models,
templates, every project's jobs; its own project is `default` unless `--project` says).

Talks to MongoDB directly (MONGO_URL, NEOBATCH_DB). A new key is printed once, on create;
only its SHA-256 is stored, and no command ever prints a stored hash.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from neobatch.common.clock import utcnow
from neobatch.common.ids import new_id
from neobatch.common.mongo import create_mongo_client
from neobatch.console.keys.auth import OPERATOR_ROLE, PROJECT_ROLE, key_doc, new_api_key
from neobatch.console.keys.store import KeyStore
from neobatch.console.settings import DEV_PROJECT, read_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neobatch.console.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument(
        "--project",
        help="the project the key belongs to (required for a "
        "project key; an operator key defaults to 'default')",
    )
    create.add_argument(
        "--operator",
        action="store_true",
        help="an operator key: manages models and templates, sees every project's jobs",
    )
    create.add_argument("--name", default="", help="a label to recognise the key by")
    commands.add_parser("list", help="list keys (id, project, name, created, revoked)")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    return parser


async def run(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "create" and not args.project:
        if not args.operator:
            parser.error("create: --project is required (or --operator)")
        args.project = DEV_PROJECT
    settings = read_settings()
    client = create_mongo_client(settings.common.mongo_url)
    keys = KeyStore(client.get_database(settings.common.db_name))
    try:
        await keys.ensure_indexes()
        if args.command == "create":
            key_id, api_key = new_id("key"), new_api_key()
            role = OPERATOR_ROLE if args.operator else PROJECT_ROLE
            doc = key_doc(key_id, api_key, args.project, args.name, utcnow(), role=role)
            await keys.insert_key(doc)
            print(f"key_id={key_id} project={args.project} role={role}", file=out)
            print(f"api_key={api_key}", file=out)
            print("Store the key now: it is not shown again.", file=out)
            return 0
        if args.command == "list":
            for doc in await keys.list_keys():
                revoked = doc.get("revoked_at")
                print(
                    f"{doc['_id']}\tproject={doc['project']}\t"
                    f"role={doc.get('role') or PROJECT_ROLE}\tname={doc.get('name') or ''}\t"
                    f"created={doc['created_at'].isoformat()}\t"
                    f"revoked={revoked.isoformat() if revoked else '-'}",
                    file=out,
                )
            return 0
        if await keys.save_revocation(args.key_id, utcnow()):
            print(f"revoked {args.key_id}", file=out)
            return 0
        print(f"no live key {args.key_id!r}", file=sys.stderr)
        return 1
    finally:
        await client.close()


def main() -> None:
    sys.exit(asyncio.run(run(sys.argv[1:])))

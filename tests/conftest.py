"""Shared fixtures: the tiny model folders (built once per session), the stand-in Ollama, an offline
environment, and a database on each engine (SQLite, a throw-away PostgreSQL server)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from ollama_standin import OllamaStandIn  # noqa: E402
from tiny_model import tiny_adapter, tiny_llama_dir, tiny_model_dir  # noqa: E402,F401  (fixtures)


@pytest.fixture
async def standin():
    """A started stand-in Ollama HTTP server on loopback (tests/ollama_standin.py)."""
    server = OllamaStandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throw-away PostgreSQL server on loopback for the whole run (tests/postgres_cluster.py);
    the PostgreSQL half of the storage tests is skipped, saying why, only where the server is not
    installed (scripts/install_postgres.sh, run by `make test`, installs it)."""
    from postgres_cluster import ClusterUnavailable, PostgresCluster

    try:
        cluster = PostgresCluster().start()
    except ClusterUnavailable as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path):
    """One empty database per test, on each engine: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "g.db")
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = await cluster.create_database()
    yield url
    await cluster.drop_database(url)

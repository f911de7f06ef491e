import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("IMAGEGEN_ENV", "test")

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.storage_db",
    "tests.fixtures.tiny_pipeline",
]

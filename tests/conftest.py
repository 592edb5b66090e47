"""Shared test setup: keep every test offline and its caches inside pytest's tmp dirs."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WDIV_CACHE", str(tmp_path_factory.mktemp("wdiv_cache")))
    yield

"""Fixtures of the search tests."""

import socket

import pytest


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1: (port, close); the port answers until close() is called."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1], server.close
    server.close()

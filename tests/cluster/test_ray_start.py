"""The environment a Ray node is started with."""

from __future__ import annotations

import pytest

from cluster.ray_start import ray_env


def test_a_node_does_not_inherit_a_drivers_node_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALCLUSTER_NODE_IP_ADDRESS says where a driver on this machine attaches. A node started with it passes it to
    the job drivers it runs, which then attach to that other node's raylet and register an address their peers
    cannot reach (a `ray job submit` hung in its first Serve deploy)."""
    monkeypatch.setenv("EVALCLUSTER_NODE_IP_ADDRESS", "198.18.1.254")
    monkeypatch.setenv("RAY_ADDRESS", "198.18.1.1:6379")
    env = ray_env(auth_mode="disabled", token_path=None, multi_node=True, drain_timeout_s=1)
    assert "EVALCLUSTER_NODE_IP_ADDRESS" not in env and "RAY_ADDRESS" not in env
    assert env["RAY_AUTH_MODE"] == "disabled" and env["EVALCLUSTER_HOME"]

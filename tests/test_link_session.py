"""What the session's reports set going: acks, refusals, the connection, set-up faults.

The whole agent on the simulated bench with the in-memory link (test_agent_turns.py's
rig): the events are what `MqttLink` would put on the inbox.
"""

from __future__ import annotations

from pathlib import Path

from bench_agent.link.mqtt import Acked, Refused, SetupFailed
from tests.test_agent_turns import PUBLISH_S, agent_rig


def test_a_refusal_is_a_fault_until_the_broker_acks_again(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        session = rig.agent.session
        session.handle(Refused(rig.link.generation, 999, "Not authorized (0x87)"))
        assert rig.agent.faults.get("broker_refused") == "Not authorized (0x87)"
        session.handle(Acked(rig.link.generation, 1))
        assert "broker_refused" not in rig.agent.faults


def test_a_setup_problem_is_a_fault_with_its_detail_cut_to_a_line(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.agent.session.handle(SetupFailed("ca_file: " + "x" * 1000))
        detail = rig.agent.faults.get("mqtt_setup")
        assert detail is not None and len(detail) == 300 and detail.startswith("ca_file: ")
        rig.agent.session.handle(SetupFailed(None))
        assert "mqtt_setup" not in rig.agent.faults


def test_a_connection_sends_status_and_state_before_the_backlog(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.link.down()
        rig.run_for(2 * PUBLISH_S)
        went_down = rig.agent.session.changed_mono
        assert went_down == rig.clock.mono - 2 * PUBLISH_S + 10  # the turn after down()
        rig.link.sent.clear()
        rig.link.up()
        rig.agent.turn(wait=False)
        leaves = [s.leaf for s in rig.link.sent]
        assert leaves[:2] == ["status", "state"] and "telemetry" in leaves[2:]
        assert rig.agent.session.changed_mono == rig.clock.mono

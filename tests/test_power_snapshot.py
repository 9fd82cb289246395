"""The controller's frozen snapshot and its `payload()`: the body of the retained `state`
message, byte for byte as the bench sends it, checked against schemas/state.schema.json."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.link import payloads
from bench_agent.power.snapshot import (
    BatteryState,
    OutputState,
    OverrideView,
    PowerState,
    Protections,
)
from bench_agent.power.soc import Source
from bench_agent.vocabulary import Reason
from tests.outbox_support import validate

ENVELOPE = {
    "v": payloads.CONTRACT_VERSION,
    "bench": "tgk-alun-alun-01",
    "ts": "2026-12-04T05:00:00.000Z",
}
TAIL = {"tamper_open": False, "faults": []}  # added by the state publisher, not the snapshot


def state_schema() -> dict[str, Any]:
    text = resources.files("bench_agent.schemas").joinpath("state.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def evening() -> PowerState:
    """usb1 held on by a technician, usb2 latched off, the Wi-Fi switch not drivable."""
    return PowerState(
        outputs={
            "usb1": OutputState(
                on=True,
                reason=Reason.OVERRIDE_ON,
                detail="override by technician",
                override=OverrideView(
                    on=True, expires_in_s=1799.5, source="technician:uid=1000(budi)"
                ),
            ),
            "usb2": OutputState(
                on=False,
                reason=Reason.OVERCURRENT_LATCHED,
                detail="3 trips in 10 min",
                override=OverrideView(on=False, expires_in_s=None, source="ops"),
            ),
            "wifi": OutputState(
                on=None, reason=Reason.OVER_TEMPERATURE, detail="CPU 71.5 °C", override=None
            ),
        },
        latched_faults=("overcurrent.usb2",),
        battery=BatteryState(soc_pct=41.3, source="coulomb", confidence=0.87),
        protections=Protections(shed={"wifi": False, "usb": True}, over_temperature=True),
    )


def state_message(state: PowerState) -> bytes:
    """What StatePublisher.publish sends: the envelope, the snapshot, then its own keys."""
    return payloads.encode({**ENVELOPE, **state.payload(), **TAIL})


def test_the_payload_bytes_are_compact_ordered_utf8_json() -> None:
    expected = (
        '{"v":1,"bench":"tgk-alun-alun-01","ts":"2026-12-04T05:00:00.000Z",'
        '"outputs":{'
        '"usb1":{"on":true,"reason":"override_on","detail":"override by technician",'
        '"override":{"state":"on","expires_in_s":1799.5,"source":"technician:uid=1000(budi)"}},'
        '"usb2":{"on":false,"reason":"overcurrent_latched","detail":"3 trips in 10 min",'
        '"override":{"state":"off","expires_in_s":null,"source":"ops"}},'
        '"wifi":{"on":null,"reason":"over_temperature","detail":"CPU 71.5 °C","override":null}},'
        '"latched_faults":["overcurrent.usb2"],'
        '"battery":{"soc_pct":41.3,"source":"coulomb","confidence":0.87},'
        '"battery_protection":{"wifi_shed":false,"usb_shed":true,"over_temperature":true},'
        '"tamper_open":false,"faults":[]}'
    ).encode()
    assert state_message(evening()) == expected
    assert b"71.5 \xc2\xb0C" in expected  # the degree sign as UTF-8, not \u00b0: fewer bytes


def test_the_sent_message_validates_and_decodes_to_the_payload_unchanged() -> None:
    state = evening()
    message = json.loads(state_message(state))
    validate("state", message)
    # Only JSON types in the payload (a tuple would come back a list, a Reason a str).
    assert {k: message[k] for k in state.payload()} == state.payload()


def test_the_payload_fills_exactly_what_the_schema_requires_of_the_controller() -> None:
    schema = state_schema()
    payload = evening().payload()
    assert set(payload) == set(schema["required"]) - set(ENVELOPE) - set(TAIL)
    properties = schema["properties"]
    output_schema = properties["outputs"]["additionalProperties"]
    override_schema = output_schema["properties"]["override"]["oneOf"][1]
    for output in payload["outputs"].values():
        assert set(output) == set(output_schema["required"])
    assert set(payload["outputs"]["usb1"]["override"]) == set(override_schema["required"])
    assert set(payload["battery"]) == set(properties["battery"]["required"])
    assert set(payload["battery_protection"]) == set(properties["battery_protection"]["required"])
    # Every source the estimator can name is one the schema accepts.
    assert set(get_args(Source)) <= set(properties["battery"]["properties"]["source"]["enum"])


def test_before_anything_is_known_the_payload_still_validates() -> None:
    """The first state after a start: no decision yet, no state of charge, nothing latched."""
    first = PowerState(
        outputs={
            name: OutputState(
                on=None, reason=Reason.SAFE_STATE, detail="before the first decision", override=None
            )
            for name in ("usb1", "wifi")
        },
        latched_faults=(),
        battery=BatteryState(soc_pct=None, source="voltage_anchor", confidence=0.0),
        protections=Protections(shed={"wifi": False, "usb": False}, over_temperature=False),
    )
    payload = first.payload()
    assert payload["battery"]["soc_pct"] is None and payload["latched_faults"] == []
    assert payload["outputs"]["usb1"] == {
        "on": None,
        "reason": "safe_state",
        "detail": "before the first decision",
        "override": None,
    }
    validate("state", json.loads(payloads.encode({**ENVELOPE, **payload, **TAIL})))


def test_the_snapshot_is_frozen_and_owns_its_outputs() -> None:
    outputs = {"usb1": evening().outputs["usb1"]}
    state = dataclasses.replace(evening(), outputs=outputs)
    outputs["usb9"] = evening().outputs["usb2"]  # the controller's dict, changed later
    assert list(state.outputs) == ["usb1"]
    with pytest.raises(TypeError):
        state.outputs["usb2"] = evening().outputs["usb2"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.latched_faults = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.battery.soc_pct = 99.0  # type: ignore[misc]
    # Each payload is a new value: what a caller does to one does not reach the next.
    first = state.payload()
    first["latched_faults"].append("overcurrent.usb1")
    first["outputs"]["usb1"]["on"] = False
    again = state.payload()
    assert again["latched_faults"] == ["overcurrent.usb2"]
    assert again["outputs"]["usb1"]["on"] is True


@settings(max_examples=150, deadline=None)
@given(
    outputs=st.dictionaries(
        st.sampled_from(["usb1", "usb2", "usb3", "wifi"]),
        st.builds(
            OutputState,
            on=st.none() | st.booleans(),
            reason=st.sampled_from(list(Reason)),
            detail=st.text(max_size=20),
            override=st.none()
            | st.builds(
                OverrideView,
                on=st.booleans(),
                expires_in_s=st.none() | st.floats(min_value=0, max_value=86_400),
                source=st.sampled_from(["ops", "uplink_recovery", "technician:uid=0(root)"]),
            ),
        ),
        max_size=4,
    ),
    latched=st.lists(st.sampled_from(["usb1", "usb2", "usb3"]), unique=True),
    battery=st.builds(
        BatteryState,
        soc_pct=st.none() | st.floats(min_value=0, max_value=100),
        source=st.sampled_from(get_args(Source)),
        confidence=st.floats(min_value=0, max_value=1),
    ),
    protections=st.builds(
        Protections,
        st.fixed_dictionaries({"wifi": st.booleans(), "usb": st.booleans()}),
        st.booleans(),
    ),
)
def test_every_snapshot_the_controller_can_hold_is_a_valid_state(
    outputs: dict[str, OutputState],
    latched: list[str],
    battery: BatteryState,
    protections: Protections,
) -> None:
    state = PowerState(
        outputs=outputs,
        latched_faults=tuple(f"overcurrent.{name}" for name in latched),
        battery=battery,
        protections=protections,
    )
    message = json.loads(state_message(state))
    validate("state", message)
    assert message["outputs"] == {name: out.payload() for name, out in outputs.items()}
    assert message["latched_faults"] == [f"overcurrent.{name}" for name in latched]

"""Group, Chain and Chord are built as Go Machinery builds them, and sent in Go's wire shapes."""

from __future__ import annotations

import json

import pytest

from machinery_aio import Arg, Chain, Chord, Config, Group, Server, Signature
from tests.conftest import golden


def add(*values: int, uuid: str = "") -> Signature:
    return Signature(uuid=uuid, name="add", args=[Arg(type="int64", value=v) for v in values])


def test_group_sets_uuid_and_count_on_every_member() -> None:
    a, b, c = add(1), add(2), add(3, uuid="task_given")
    group = Group(a, b, c)
    assert group.group_uuid.startswith("group_")
    assert len(group) == 3
    for sig in group.tasks:
        assert sig.group_uuid == group.group_uuid
        assert sig.group_task_count == 3
        assert sig.uuid.startswith("task_")
    assert c.uuid == "task_given"
    assert group.task_uuids() == [a.uuid, b.uuid, c.uuid]
    assert len(set(group.task_uuids())) == 3


def test_group_accepts_a_list_and_a_given_uuid() -> None:
    sigs = [add(1), add(2)]
    group = Group(sigs, group_uuid="group_mine")
    assert group.tasks == sigs
    assert all(s.group_uuid == "group_mine" for s in sigs)


def test_empty_or_wrong_workflows_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        Group()
    with pytest.raises(ValueError, match="at least one task"):
        Chain()
    with pytest.raises(TypeError, match="workflows take Signatures, got str"):
        Group(add(1), "add")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="workflows take Signatures, got int"):
        Chain([add(1), 5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="a chord takes a Group"):
        Chord([add(1)], add(2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callback must be a Signature"):
        Chord(Group(add(1)), "cb")  # type: ignore[arg-type]


def test_chord_embeds_the_callback_in_every_member() -> None:
    group = Group(add(1), add(2))
    callback = Signature(name="sum")
    chord = Chord(group, callback)
    assert callback.uuid.startswith("chord_")
    for sig in group.tasks:
        assert sig.chord_callback is callback
    assert chord.group is group
    assert chord.callback is callback
    kept = Signature(uuid="task_cb", name="sum")
    Chord(Group(add(1)), kept)
    assert kept.uuid == "task_cb"


def test_chain_nests_each_link_in_the_previous_on_success() -> None:
    a, b, c = add(1, 1), add(5, 5), Signature(name="multiply", args=[Arg(type="int64", value=4)])
    chain = Chain(a, b, c)
    assert len(chain) == 3
    assert a.on_success == [b]
    assert b.on_success == [c]
    assert c.on_success is None
    assert all(s.uuid.startswith("task_") for s in chain.tasks)
    assert Chain([a]).tasks == [a]


def test_reprs_name_the_parts() -> None:
    chain = Chain(add(1), Signature(name="multiply"))
    assert repr(chain) == "<Chain of 2: add -> multiply>"
    group = Group(add(1))
    assert repr(group) == f"<Group {group.group_uuid} of 1>"
    assert "-> sum" in repr(Chord(Group(add(1)), Signature(name="sum")))


# -- on the wire -----------------------------------------------------------------------------


async def test_sent_chain_is_gos_send_chain_message_byte_for_byte(unique: str) -> None:
    server = Server(Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}"))
    chain = Chain(
        add(1, 1, uuid="task_68c617c7-799f-4b62-b29f-724b176af8bc"),
        add(5, 5, uuid="task_f9aa6696-2a48-447e-a451-e64e1239caea"),
        Signature(
            uuid="task_b04bbfe9-536b-4f90-8da0-0fe64ee23890",
            name="multiply",
            args=[Arg(type="int64", value=4)],
        ),
    )
    await server.send_chain(chain)
    pending = await server.broker.get_pending_tasks("machinery_tasks")
    assert [s.to_json() for s in pending] == [golden("02_chain_onsuccess_nesting")]
    await server.close()


async def test_sent_chord_member_is_gos_message_byte_for_byte(unique: str) -> None:
    server = Server(Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}"))
    group = Group(
        add(1, 1, uuid="task_b6e536c9-a877-493d-8201-6ed9ed1aefd0"),
        add(2, 2, uuid="task_c51a4378-15a2-4199-8981-92464cdfed0c"),
        group_uuid="group_ae13d723-0c02-4101-8392-2d5aff8c4ce4",
    )
    callback = Signature(uuid="chord_3cb95e1c-1469-4b4a-bded-313f7e582849", name="multiply")
    await server.send_chord(Chord(group, callback))
    pending = await server.broker.get_pending_tasks("machinery_tasks")
    assert pending[0].to_json() == golden("03_chord_member")
    second = json.loads(pending[1].to_json())
    assert second["GroupUUID"] == "group_ae13d723-0c02-4101-8392-2d5aff8c4ce4"
    assert second["ChordCallback"]["UUID"] == callback.uuid
    meta = await server.backend.get_group_meta(group.group_uuid)
    assert meta is not None
    assert meta.task_uuids == group.task_uuids()
    await server.close()


def test_a_chain_as_long_as_one_message_carries_decodes_link_for_link() -> None:
    from machinery_aio.workflow import MAX_CHAIN_LINKS

    chain = Chain(*[add(i) for i in range(MAX_CHAIN_LINKS)])
    decoded = Signature.from_json(chain.tasks[0].to_json())  # deeper than pydantic's parser goes
    links = 1
    while decoded.on_success:
        [decoded] = decoded.on_success
        links += 1
    assert links == MAX_CHAIN_LINKS
    assert decoded.uuid == chain.tasks[-1].uuid
    assert chain.tasks[0].copy_fresh().to_json() == chain.tasks[0].to_json()


def test_a_chain_too_long_for_one_message_is_refused_with_the_limit() -> None:
    from machinery_aio.workflow import MAX_CHAIN_LINKS

    with pytest.raises(ValueError, match=rf"a chain of {MAX_CHAIN_LINKS + 1} tasks nests too deep.*at most"):
        Chain(*[add(i) for i in range(MAX_CHAIN_LINKS + 1)])


def test_deep_json_that_is_not_json_is_still_an_invalid_message() -> None:
    from machinery_aio.signature import InvalidMessageError

    body = '{"UUID":"task_1","Name":"add","OnSuccess":' + "[" * 300 + "]" * 299
    with pytest.raises(InvalidMessageError, match="not valid JSON"):
        Signature.from_json(body)

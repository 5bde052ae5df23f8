"""A script's source keeps the helpers it reaches and only those, with its key names
written in (storage/lua_source.py); every script so assembled compiles on a real Redis."""

from __future__ import annotations

import re

import pytest
from redis.exceptions import ResponseError

from coordinator.storage import key_tags, scripts
from coordinator.storage.lua_source import assembled, definitions

HELPER = """-- a helper file
local LIMIT = 3
local NAMES = {
  'a', 'b',
}

-- used by used()
local function inner(x)
  return x + LIMIT
end

local function used(x)
  return inner(x) .. K.queue
end

-- never reached
local function unused()
  return NAMES
end
"""


def test_only_what_the_body_reaches_is_kept_with_its_comments():
    source = assembled("return used(1)", [("h.lua", HELPER)], {"queue": "tasks:queue:"})
    assert "local function used" in source and "local function inner" in source
    assert "local LIMIT = 3" in source and "-- used by used()" in source
    assert "unused" not in source and "NAMES" not in source and "never reached" not in source
    assert "return inner(x) .. 'tasks:queue:'" in source  # K.queue written in
    assert source.endswith("return used(1)")


def test_a_name_in_a_comment_keeps_nothing_and_a_table_over_lines_is_one_definition():
    found = definitions(HELPER, "h.lua")
    assert [d.name for d in found] == ["LIMIT", "NAMES", "inner", "used", "unused"]
    assert found[1].text.endswith("  'a', 'b',\n}")
    source = assembled("-- unused()\nreturn 1", [("h.lua", HELPER)], {"queue": "q"})
    assert source == "-- unused()\nreturn 1"


def test_a_helper_file_off_the_layout_or_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match=r"h\.lua:2: not a top-level definition"):
        definitions("local A = 1\nredis.call('DEL', 'x')\n", "h.lua")
    with pytest.raises(ValueError, match="never closes"):
        definitions("local A = {\n  1,\n", "h.lua")
    with pytest.raises(KeyError, match=r"K\.nope"):
        assembled("return K.nope", [], {"queue": "q"})
    with pytest.raises(ValueError, match="K is used otherwise"):
        assembled("local k = K\nreturn k.queue", [], {"queue": "q"})
    # A string that spells K is no use of the table.
    assert assembled("return 'K'", [], {}) == "return 'K'"


@pytest.mark.parametrize("tag", ["", "aitbc"])
async def test_every_script_compiles_as_assembled(redis_client, tag):
    key_tags.use_tag(tag)
    try:
        for name in (*scripts.SCRIPT_NAMES, *scripts.TASK_SCRIPT_NAMES):
            source = scripts.source(name)
            assert not re.search(r"\bK\.\w", re.sub(r"--[^\n]*", "", source)), name
            await redis_client.script_load(source)  # a syntax error is refused here
    finally:
        key_tags.use_tag("")


async def test_each_entry_answers_as_its_own_call_would(redis_client, multiplexed):
    body = """
if ARGV[1] == 'nil' then
  return nil
elseif ARGV[1] == 'lua error' then
  return 1 + nil
elseif ARGV[1] == 'redis error' then
  return redis.call('LPUSH', 'a string', 1)
end
redis.call('RPUSH', 'done', ARGV[1])
return {ARGV[1], #ARGV}
"""
    await redis_client.set("a string", "x")
    entries = assembled(body, [], {}, entries=True)
    sha = await redis_client.script_load(entries)
    argv = [1, "first", 1, "nil", 1, "lua error", 1, "redis error", 2, "last", "extra"]

    (replies,) = await multiplexed.execute([("EVALSHA", sha, 0, *argv)])

    assert replies[0] == ["first", 1] and replies[1] is None and replies[4] == ["last", 2]
    assert isinstance(replies[2], ResponseError) and "arithmetic" in str(replies[2])
    assert type(replies[3]) is ResponseError and str(replies[3]).startswith("WRONGTYPE")
    assert await redis_client.lrange("done", 0, -1) == ["first", "last"]  # the rest ran

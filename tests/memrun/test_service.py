"""The SDK's declaration surface: MemoryService, its decorators, sizes and sticky keys."""

import pytest

from memrun import ConfigError, MemoryService, StickyKeyError
from memrun.wire.sizes import format_size, parse_size
from memrun.wire.sticky import StickyTemplate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32Gi", 32 * 2**30),
        ("600Gi", 600 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("4G", 4 * 10**9),
        ("4GB", 4 * 10**9),
        ("100", 100),
        (2048, 2048),
    ],
)
def test_sizes_parse_to_bytes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["32Gb!", "lots", "-1Gi", "0", 0, "", True, "3Xi"])
def test_bad_sizes_name_the_field(bad):
    with pytest.raises(ConfigError, match="memory"):
        parse_size(bad, field="memory")


def test_format_size_is_the_inverse_for_whole_units():
    for size in (32 * 2**30, 600 * 2**30, 512 * 2**20, 1000):
        assert parse_size(format_size(size)) == size


def test_sticky_template_builds_keys_from_payload():
    template = StickyTemplate.parse("user_id:dataset_id")
    assert template.key_for({"user_id": 42, "dataset_id": "sales", "q": "x"}) == "42:sales"
    assert StickyTemplate.parse("user.id").key_for({"user": {"id": 7}}) == "7"


def test_sticky_template_names_the_missing_field():
    template = StickyTemplate.parse("user_id:dataset_id")
    with pytest.raises(StickyKeyError, match="dataset_id") as caught:
        template.key_for({"user_id": 1})
    assert caught.value.details["field"] == "dataset_id"
    with pytest.raises(StickyKeyError, match="JSON object"):
        template.key_for(["not", "an", "object"])
    with pytest.raises(StickyKeyError, match="string or number"):
        template.key_for({"user_id": {"nested": 1}, "dataset_id": "a"})


@pytest.mark.parametrize("bad", ["", "user id", "a::b", "a:a", "1abc", "a-b"])
def test_bad_sticky_templates_are_refused(bad):
    with pytest.raises(ConfigError, match="sticky_key"):
        StickyTemplate.parse(bad)


def test_decorators_register_and_return_the_function_unchanged():
    svc = MemoryService(name="matrix-qa", memory="32Gi", disk="600Gi", max_workers=50)

    async def setup(ctx):
        return None

    def warm(ctx):
        return None

    async def handle(ctx, req):
        return req

    assert svc.init_handler()(setup) is setup
    assert svc.init_handler()(warm) is warm
    assert svc.handler(sticky_key="user_id:dataset_id")(handle) is handle
    assert [spec.fn for spec in svc.init_handlers] == [setup, warm]
    assert [spec.is_async for spec in svc.init_handlers] == [True, False]
    assert svc.request_handler is not None and svc.request_handler.is_async
    config = svc.config()
    assert config.sticky_key == "user_id:dataset_id"
    assert config.memory_bytes == 32 * 2**30
    assert config.concurrency == 16 and config.timeout_seconds == 300


def test_decorators_without_parentheses_say_the_fix():
    svc = MemoryService("svc-a")
    with pytest.raises(ConfigError, match=r"@svc.handler\(\), with parentheses"):

        @svc.handler
        def handle(ctx, req):
            return None

    with pytest.raises(ConfigError, match=r"@svc.init_handler\(\), with parentheses"):

        @svc.init_handler
        def setup(ctx):
            return None


def test_a_second_handler_is_refused():
    svc = MemoryService("svc-b")

    @svc.handler()
    def first(ctx, req):
        return None

    with pytest.raises(ConfigError, match="exactly one"):

        @svc.handler()
        def second(ctx, req):
            return None


def test_handler_signature_is_checked_at_import():
    svc = MemoryService("svc-c")
    with pytest.raises(ConfigError, match=r"must take \(ctx, request\)"):

        @svc.handler()
        def handle(req):
            return None


def test_conflicting_sticky_keys_are_refused():
    svc = MemoryService("svc-d", sticky_key="user_id")
    with pytest.raises(ConfigError, match="one place"):
        svc.handler(sticky_key="dataset_id")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "Bad_Name"}, "service name"),
        ({"name": "x"}, "service name"),
        ({"name": "ok-name", "memory": "huge"}, "memory"),
        ({"name": "ok-name", "concurrency": 0}, "concurrency"),
        ({"name": "ok-name", "min_workers": 3, "max_workers": 2}, "min_workers"),
        ({"name": "ok-name", "timeout_seconds": 1.5}, "timeout_seconds"),
    ],
)
def test_bad_service_definitions_fail_with_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MemoryService(**kwargs)


def test_apply_config_adopts_the_deployed_settings_and_keeps_the_handlers():
    svc = MemoryService("code-name", concurrency=4)

    @svc.handler(sticky_key="user_id")
    def handle(ctx, req):
        return None

    deployed = MemoryService("deployed-name", memory="8Gi", concurrency=2, sticky_key="org")
    svc.apply_config(deployed.config())
    assert svc.config() == deployed.config()
    assert svc.request_handler is not None and svc.request_handler.fn is handle

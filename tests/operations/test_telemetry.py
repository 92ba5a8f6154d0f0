"""What the portal keeps of a host's telemetry answer: the schema, nothing else."""

from portal.operations.telemetry import clean


def test_a_hosts_answer_is_read_like_any_input():
    answer = {
        "samples": [
            {
                "vendor": "nvidia",
                "index": 0,
                "utilization_pct": 37.5,
                "memory_used_mib": 1024,
                "temperature_c": float("nan"),  # never stored as a reading
                "power_w": -3,  # no negative power
                "processes": [
                    {"pid": 42, "user": "alice", "used_memory_mib": 100, "system": False},
                    {"pid": True, "user": "bob"},  # a bool is not a pid
                    {"pid": 43, "user": ["root"], "system": "yes"},  # neither is a list a user
                    "rm -rf /",
                ],
                "extra": "dropped",
            },
            {"vendor": "amd", "index": "1"},  # an index must be a number
            {"index": 2},  # and a sample needs its vendor
        ],
        "errors": [{"vendor": "intel", "message": "xpu-smi exited with status 1"}, "junk"],
    }
    assert clean(answer) == {
        "samples": [
            {
                "vendor": "nvidia",
                "index": 0,
                "utilization_pct": 37.5,
                "memory_used_mib": 1024,
                "temperature_c": None,
                "power_w": None,
                "processes": [
                    {"pid": 42, "user": "alice", "used_memory_mib": 100, "system": False},
                    {"pid": 43, "user": None, "used_memory_mib": None, "system": False},
                ],
            }
        ],
        "errors": [{"vendor": "intel", "message": "xpu-smi exited with status 1"}],
    }
    assert clean({}) == {"samples": [], "errors": []}

"""Runtime targets, pure: which launch each runtime gets and the exact (quoted) remote scripts."""

from __future__ import annotations

import shlex

import pytest

from neobatch.common.contracts import EngineSpec
from neobatch.runtime_agent.machine.errors import EngineLaunchFailed, EngineStartFailed
from neobatch.runtime_agent.machine.launch import (
    DEFAULT_IMAGE,
    container_name,
    docker_check_script,
    docker_launch_script,
    docker_logs_script,
    docker_status_script,
    docker_stop_script,
    engine_argv,
    plan_launch,
)

NASTY_NAME = "m'; touch /tmp/pwned #"
NASTY_ARGS = ["--chat-template", "$(touch /tmp/pwned)", "--x", '`id` "q"']


def spec(**overrides) -> EngineSpec:
    fields = {
        "serving_name": "llama-8b",
        "model_uri": "meta-llama/Llama-3.1-8B-Instruct",
        "port": 8123,
        "serve_args": ["--max-model-len", "4096"],
        "engine_args": {"gpu_memory_utilization": 0.9, "enforce_eager": True, "skip": None},
        "parallelism": {"tp": 2, "pp": 1, "dp": 3},
    }
    return EngineSpec(**{**fields, **overrides})


def test_runpod_runs_vllm_serve_on_loopback_with_every_flag() -> None:
    launch = plan_launch("runpod", "batch_1", spec())
    assert not launch.in_docker
    assert launch.argv == [
        "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
        "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "llama-8b",
        "--max-model-len", "4096",
        "--gpu-memory-utilization", "0.9", "--enforce-eager",
        "--tensor-parallel-size", "2", "--data-parallel-size", "3",
        "--enable-prefix-caching", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    assert launch.port == 8123


def test_parallelism_already_in_the_args_is_not_repeated() -> None:
    argv = engine_argv(spec(serve_args=["--tensor-parallel-size", "4"], engine_args={}))
    assert argv.count("--tensor-parallel-size") == 1
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"


PREFIX, DETAILS = "--enable-prefix-caching", "--enable-prompt-tokens-details"


@pytest.mark.parametrize(
    ("serve_args", "engine_args", "expected"),
    [
        ([], {}, [PREFIX, DETAILS]),
        # The template's own word, either way and in any spelling, is not repeated.
        ([PREFIX], {}, [PREFIX, DETAILS]),
        (["--no-enable-prefix-caching"], {}, ["--no-enable-prefix-caching", DETAILS]),
        ([DETAILS + "=false"], {}, [DETAILS + "=false", PREFIX]),
        ([], {"enable_prefix_caching": True}, [PREFIX, DETAILS]),
        ([], {"enable_prefix_caching": False}, [DETAILS]),
        ([], {"enable-prompt-tokens-details": False}, [PREFIX]),
    ],
)
def test_cache_switches_are_added_once_unless_the_template_sets_them(
    serve_args: list[str], engine_args: dict[str, object], expected: list[str]
) -> None:
    for runtime in ("runpod", "lambdaCloud"):
        engine = spec(serve_args=serve_args, engine_args=engine_args)
        argv = plan_launch(runtime, "batch_1", engine).argv
        said = [word for word in argv if "prefix-caching" in word or "tokens-details" in word]
        assert said == expected, (runtime, argv)


def test_lambda_runs_the_image_in_docker_on_port_8000() -> None:
    launch = plan_launch("lambdaCloud", "batch_1", spec(image="vllm/vllm-openai:v0.9.1"))
    assert launch.in_docker and launch.image == "vllm/vllm-openai:v0.9.1"
    assert launch.container == "neobatch-batch_1"
    assert launch.argv == [
        "--model", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama-8b",
        "--host", "0.0.0.0", "--port", "8000",
        "--max-model-len", "4096", "--gpu-memory-utilization", "0.9", "--enforce-eager",
        "--tensor-parallel-size", "2", "--data-parallel-size", "3",
        "--enable-prefix-caching", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    # A first run pulls the image: the launch may take longer than a plain command.
    assert launch.launch_timeout_seconds >= 600
    assert plan_launch("lambdaCloud", "batch_1", spec()).image == DEFAULT_IMAGE


@pytest.mark.parametrize("runtime", ["ssh", "runpod", "lambdaCloud"])
def test_a_template_command_wins_on_every_runtime(runtime: str) -> None:
    command = ["python", "-m", "engine", "--port", "{port}", "--model", "{model}"]
    launch = plan_launch(runtime, "batch_1", spec(command=command, image="ignored:1"))
    assert not launch.in_docker
    assert launch.argv == ["python", "-m", "engine", "--port", "8123", "--model", "llama-8b"]


@pytest.mark.parametrize(
    ("runtime", "overrides"),
    [
        ("lambdaCloud", {"image": "--privileged"}),
        ("runpod", {"model_uri": "--trust-remote-code"}),
        ("lambdaCloud", {"serve_args": ["--x", "a\x00b"]}),
        ("ssh", {"command": ["python", "-c", "\x00"]}),
    ],
)
def test_option_shaped_images_and_models_and_nul_bytes_are_refused(
    runtime: str, overrides: dict[str, object]
) -> None:
    with pytest.raises(EngineLaunchFailed):
        plan_launch(runtime, "batch_1", spec(**overrides))


def test_unknown_runtime_and_engine_without_launch_are_refused() -> None:
    with pytest.raises(EngineLaunchFailed) as caught:
        plan_launch("gcp", "batch_1", spec())
    assert caught.value.code == "engine_launch_failed" and "gcp" in caught.value.message
    with pytest.raises(EngineStartFailed) as unsupported:
        plan_launch("runpod", "batch_1", spec(engine_type="sglang"))
    assert unsupported.value.code == "engine_unsupported"


@pytest.mark.parametrize("bad", ["batch_1; rm -rf /", "../etc", "", "a b"])
def test_batch_ids_that_are_not_plain_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        container_name(bad)
    with pytest.raises(ValueError):
        plan_launch("lambdaCloud", bad, spec())


def _docker_run_line(script: str) -> list[str]:
    line = next(x for x in script.splitlines() if " docker run " in x)
    return shlex.split(line.removesuffix(" >/dev/null || exit 1"))


def test_docker_run_line_quotes_every_value() -> None:
    engine = spec(serving_name=NASTY_NAME, serve_args=NASTY_ARGS, image="img:1", port=9001)
    launch = plan_launch("lambdaCloud", "batch_q", engine)
    script = docker_launch_script(launch)
    assert _docker_run_line(script) == [
        "sudo", "-n", "docker", "run", "-d", "--name", "neobatch-batch_q", "--gpus", "all",
        "--ipc=host", "-p", "127.0.0.1:9001:8000", "img:1", *launch.argv,
    ]  # fmt: skip
    assert NASTY_NAME in launch.argv and NASTY_ARGS[1] in launch.argv
    # Reused when running, replaced (rm -f) otherwise.
    assert 'echo "reused' in script and "docker rm -f neobatch-batch_q" in script


def test_docker_status_stop_logs_and_check_scripts() -> None:
    launch = plan_launch("lambdaCloud", "batch_s", spec())
    assert "docker inspect --format '{{.State.Running}}' neobatch-batch_s" in (
        docker_status_script(launch)
    )
    stop = docker_stop_script(launch, 7.5)
    assert "docker stop -t 7 neobatch-batch_s" in stop
    assert "docker rm -f neobatch-batch_s" in stop
    # Confirmed gone: a container still inspectable after rm fails the stop.
    assert stop.strip().endswith("echo stopped") and "exit 1" in stop
    logs = docker_logs_script(launch, 65536)
    assert "docker logs --tail 2000 neobatch-batch_s 2>&1 | tail -c 65536" in logs
    check = docker_check_script()
    assert "sudo -n docker info --format '{{json .Runtimes}}'" in check
    for word in ("no-docker", "no-nvidia", "docker-error", "ok"):
        assert word in check


@pytest.mark.parametrize(
    ("stderr", "status", "expected"),
    [
        ("sudo: docker: command not found", 1, "no-docker"),
        ("sh: 1: sudo: not found", 127, "docker-error sudo is not available to run docker"),
        (
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\\nIs it running?",
            1,
            "docker-error Cannot connect to the Docker daemon at "
            "unix:///var/run/docker.sock. Is it running?",
        ),
    ],
)
def test_docker_check_tells_missing_docker_from_a_broken_one(
    tmp_path, stderr: str, status: int, expected: str
) -> None:
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sudo"
    fake.write_text(f'#!/bin/sh\nprintf "{stderr}\\n" >&2\nexit {status}\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["/bin/sh", "-c", docker_check_script()],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert out.stdout.strip() == expected

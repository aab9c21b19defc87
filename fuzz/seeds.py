#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/seeds/<target>/ from the
repository's own files (traces, scenarios, training configs, manifests, a shipped
checkpoint). The fuzzers start from these and keep what they find in fuzz/corpus/.

Run from the repository root: python3 fuzz/seeds.py
"""
import json
import os
import struct

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
FF = b"\x0c"  # separates two inputs in one


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def head(path, n):
    with open(os.path.join(ROOT, path), "rb") as f:
        return b"".join(f.readline() for _ in range(n))


# trace: first byte picks the format (0 Azure, 1 Mooncake, 2 BurstGPT).
write("trace", "azure-code", b"\x00" + head("data/traces/AzureLLMInferenceTrace_code.csv", 12))
write("trace", "azure-conv", b"\x00" + head("data/traces/AzureLLMInferenceTrace_conv.csv", 12))
write("trace", "mooncake", b"\x01" + head("data/traces/conversation_trace.jsonl", 6))
write(
    "trace",
    "burstgpt",
    b"\x02Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    b"5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,230,1317,Conversation log\n"
    b"118,ChatGPT,417,0,417,API log\n",
)

# servegen: rate windows, a form feed, a length dataset (trimmed to two blocks).
sg = "data/traces/servegen/language/m-small"
with open(os.path.join(ROOT, sg, "chunk-12-dataset.json")) as f:
    blocks = json.load(f)
few = {k: blocks[k] for k in list(blocks)[:2]}
write("servegen", "chunk-12", head(f"{sg}/chunk-12-trace.csv", 8) + FF + json.dumps(few).encode())

# exposition: two scrapes of one vLLM pod 15 s apart, with label values holding `,`, `=`,
# `}` and escapes, a legacy name and a histogram.
def exposition(waiting, running, success, ttft):
    lines = [
        "# HELP vllm:num_requests_waiting Number of requests waiting.",
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{engine="0",model_name="m,a=b}}\\"c"}} {waiting}',
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{engine="0",model_name="m,a=b}}\\"c"}} {running}',
        "# TYPE vllm:gpu_cache_usage_perc gauge",
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.4',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5',
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} {success}',
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} {success / 10}',
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    for le, c in zip(["0.1", "0.5", "1.0", "+Inf"], ttft):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",model_name="m"}} {c}')
    lines += [
        f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {ttft[-1] * 0.2}',
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {ttft[-1]}',
        "# TYPE vllm:inter_token_latency_seconds histogram",
        f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="0.05",model_name="m"}} {ttft[-1] * 9}',
        f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {ttft[-1] * 10}',
    ]
    return ("\n".join(lines) + "\n").encode()


write("exposition", "two-scrapes", exposition(3, 12, 100, [40, 80, 95, 100]) + FF + exposition(5, 14, 160, [60, 130, 150, 160]))
write("exposition", "counter-reset", exposition(3, 12, 100, [40, 80, 95, 100]) + FF + exposition(1, 2, 4, [1, 2, 3, 4]))

# prometheus: answers to the queries in order (waiting, running, kv, completions, delta,
# trend, ttft buckets, tpot buckets, age, down, then (ttft, tpot) for p50, p90, p99).
def vector(series):
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode()


slot = {"llmos_variant": "llama8b", "llmos_pool": "l4"}


def one(v):
    return vector([{"metric": slot, "value": [1800000000.0, str(v)]}])


def buckets(pairs):
    return vector([{"metric": {"le": le}, "value": [1800000000.0, str(v)]} for le, v in pairs])


answers = [
    one(3), one(12), one(0.5), one(4.2), one(1.5),
    vector([{"metric": {}, "value": [1800000000.0, "0.01"]}]),
    buckets([("0.1", 2.0), ("0.5", 3.5), ("+Inf", 4.0)]),
    buckets([("0.05", 30.0), ("+Inf", 40.0)]),
    one(3), vector([]),
    one(0.2), one(0.03), one(0.4), one(0.04), one(0.9), one(0.05),
]
write("prometheus", "healthy", FF.join(answers))
for name, index, value in [
    ("rejected-nan-waiting", 0, "NaN"),
    ("rejected-inf-kv-cache", 2, "+Inf"),
    ("rejected-negative-running", 1, "-3"),
    ("in-flight-shrinking", 4, "-40"),
]:
    changed = list(answers)
    changed[index] = one(value)
    write("prometheus", name, FF.join(changed))
write("prometheus", "rejected-error", json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode())

# scenario: scenarios whose traffic is synthetic, and one whose trace the fuzz directory
# does not have (rejected: the trace is absent).
for name in ["synthetic-onoff-llama3-8b-a100", "synthetic-diurnal-llama3-8b-a100", "synthetic-steps-llama3-8b-a100"]:
    with open(os.path.join(ROOT, "scenarios", "mix", name + ".toml"), "rb") as f:
        write("scenario", name, f.read())
with open(os.path.join(ROOT, "scenarios", "azure-code-llama3-8b-a100.toml"), "rb") as f:
    write("scenario", "rejected-azure-code-trace-absent", f.read())

# train_config: every shipped training config.
tdir = os.path.join(ROOT, "scenarios", "train")
for name in sorted(os.listdir(tdir)):
    if name.endswith(".toml"):
        with open(os.path.join(tdir, name), "rb") as f:
            write("train_config", name[:-5], f.read())

# checkpoint: the shipped policy's sidecar with a 4-wide network, and weights that fit it.
with open(os.path.join(ROOT, "policies", "azure-code-ppo", "s0", "checkpoint.json")) as f:
    meta = json.load(f)
meta["dqn"]["hidden"] = [4]
meta["dqn"]["dueling"] = False
features = len(meta["featureNames"])
sizes = [len(b["options"]) for b in meta["branches"]]
shapes = [("torso0.weight", [4, features]), ("torso0.bias", [4])]
for d, n in enumerate(sizes):
    shapes += [(f"head{d}.weight", [n, 4]), (f"head{d}.bias", [n])]
header, offset, payload = {}, 0, b""
for name, shape in shapes:
    count = 1
    for s in shape:
        count *= s
    data = struct.pack(f"<{count}f", *[0.01 * (i % 7) for i in range(count)])
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
    payload += data
hbytes = json.dumps(header).encode()
hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
weights = struct.pack("<Q", len(hbytes)) + hbytes + payload
write("checkpoint", "tiny", json.dumps(meta).encode() + FF + weights)

# workload: the example manifests as the API server would send them (JSON).
for name in ["llmworkload-small", "llmworkload-two-variants"]:
    with open(os.path.join(ROOT, "manifests", "examples", name + ".yaml")) as f:
        doc = yaml.safe_load(f)
    doc["metadata"].setdefault("namespace", "default")
    write("workload", name, json.dumps(doc).encode())

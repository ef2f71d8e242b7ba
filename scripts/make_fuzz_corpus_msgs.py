#!/usr/bin/env python3
"""make_fuzz_corpus_msgs.py — seed corpora of the message-handler harnesses
(tests/fuzz/corpus/{ps,coordinator,worker}/): one booth protocol message each,
as the harness reads it (tests/fuzz/fuzz_ps.c and the others): a byte naming
the sender, then frames as pieces (2-byte little-endian length, bytes), the
Envelope first, then its blob frames.

The protobuf encoding is written out here from proto/booth.proto (field numbers
below), standard library only; never needed by `make test` (the output is
committed).
"""
import os
import shutil
import struct

OUT = "tests/fuzz/corpus"


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """value: int (varint), float (double), str/bytes (length-delimited), list (repeated)."""
    if isinstance(value, list):
        return b"".join(field(num, v) for v in value)
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, float):
        return varint(num << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields if v is not None)


def f32(v):  # a float field (fixed32)
    return ("f32", v)


def blob(name, kind, shape, nbytes):
    return msg((1, name), (2, kind), (3, list(shape)), (4, nbytes))


BODY = {"hello": 10, "welcome": 11, "heartbeat": 12, "error": 13, "goodbye": 14, "task": 20, "task_result": 21,
        "get_job": 22, "job_data": 23, "ps_load": 30, "ps_loaded": 31, "pull": 32, "weights": 33, "push": 34,
        "push_ack": 35, "grad_ready": 36, "apply": 37, "applied": 38, "get_state": 39, "state": 40,
        "release": 41, "submit": 50, "status_request": 52, "cancel": 54, "fetch": 56}


def envelope(body, inner, blobs=(), version=1):
    return msg((1, version), (2, [b for b in blobs]), (BODY[body], inner))


def piece(b):
    assert len(b) < 65536
    return struct.pack("<H", len(b)) + b


def f32s(values):
    return struct.pack("<%df" % len(values), *values)


def put(sub, name, sender, env, frames=()):
    d = os.path.join(OUT, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes([sender]) + piece(env) + b"".join(piece(x) for x in frames))


def tensors(prefixes, names_shapes):
    blobs, frames = [], []
    for p in prefixes:
        for name, shape in names_shapes:
            n = 1
            for s in shape:
                n *= s
            blobs.append(blob(p + name, 0, shape, 4 * n))
            frames.append(f32s([0.25 * i for i in range(n)]))
    return blobs, frames


def ps():
    sub = "ps"
    shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    co, wk = 0, 1
    ab = [("a", [2, 3]), ("b", [4, 1])]
    for micro in (0, 1):
        b, fr = tensors([""], ab)
        put(sub, f"push_micro{micro}", wk, envelope("push", msg((1, "fz"), (2, 3), (3, micro)), b), fr)
    b, fr = tensors([""], [("a", [3, 2]), ("b", [4, 1])])
    put(sub, "push_wrong_shape", wk, envelope("push", msg((1, "fz"), (2, 3), (3, 0)), b), fr)
    put(sub, "push_no_blobs", wk, envelope("push", msg((1, "fz"), (2, 3), (3, 1))))
    put(sub, "pull_now", wk, envelope("pull", msg((1, "fz"), (2, 3))))
    put(sub, "pull_next", wk, envelope("pull", msg((1, "fz"), (2, 4))))
    put(sub, "apply", co, envelope("apply", msg((1, "fz"), (2, 3), (3, 1.0))))
    put(sub, "get_state", co, envelope("get_state", msg((1, "fz"))))
    put(sub, "release", co, envelope("release", msg((1, "fz"))))
    put(sub, "welcome", co, envelope("welcome", msg((1, "ps-2"), (2, 500))))
    put(sub, "heartbeat", co, envelope("heartbeat", msg((1, "idle"))))
    put(sub, "reregister", co, envelope("error", msg((1, "who are you"), (3, 1))))
    put(sub, "error", co, envelope("error", msg((1, "a note"))))
    b, fr = tensors(["p/", "m/", "v/"], [("x", [1, 5])])
    put(sub, "ps_load_other", co,
        envelope("ps_load", msg((1, "other"), (2, '{"learning_rate": 0.01}'), (3, 0), (4, [0]), (5, 3)), b), fr)
    b, fr = tensors(["p/", "m/", "v/"], ab)
    put(sub, "ps_load_fz_step9", co,
        envelope("ps_load", msg((1, "fz"), (2, "{}"), (3, 9), (4, [0, 1]), (5, 1)), b), fr)
    put(sub, "ps_load_on_worker_socket", wk, envelope("ps_load", msg((1, "fz"), (2, "{}"), (3, 9), (4, [0]), (5, 1))))
    put(sub, "wrong_version", wk, envelope("pull", msg((1, "fz")), version=7))
    put(sub, "garbage", wk, b"\xff\x00garbage", [b"\x01\x02"])


def coordinator():
    sub = "coordinator"
    shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    client, worker, ps_ = 0, 1, 2
    job = ('{"pretrained_model_name_or_path": "tests/fixtures/tiny-sd", "instance_data_dir": '
           '"scripts/demo/subject", "instance_prompt": "a photo of sks robot", "resolution": 16, '
           '"max_train_steps": 2, "rank": 1, "seed": 3}')
    prior_job = ('{"pretrained_model_name_or_path": "tests/fixtures/tiny-sd", "instance_data_dir": '
                 '"scripts/demo/subject", "instance_prompt": "a photo of sks robot", "class_prompt": '
                 '"a photo of robot", "with_prior_preservation": true, "num_class_images": 2, '
                 '"class_inference_steps": 1, "resolution": 16, "max_train_steps": 1}')
    png = open("tests/fixtures/images/gray.png", "rb").read()
    put(sub, "submit", client, envelope("submit", msg((1, job), (3, "0123456789abcdef")),
                                        [blob("gray.png", 1, [], len(png))]), [png])
    put(sub, "submit_priors_only", client, envelope("submit", msg((1, prior_job), (2, True))))
    put(sub, "submit_bad_json", client, envelope("submit", msg((1, '{"rank": "four"}'))))
    put(sub, "status_job", client, envelope("status_request", msg((1, "job-000001"))))
    put(sub, "cancel", client, envelope("cancel", msg((1, "job-000001"))))
    put(sub, "fetch", client, envelope("fetch", msg((1, "job-000001"))))
    put(sub, "get_job_stranger", client, envelope("get_job", msg((1, "job-000001"))))
    put(sub, "get_job", worker, envelope("get_job", msg((1, "job-000001"))))
    put(sub, "task_result", worker, envelope("task_result", msg((1, 1), (2, "job-000001"), (3, True), (5, 0.5),
                                                                (8, ["a.png", "b.png"]), (9, 0.1))))
    b, fr = [blob("images", 2, [2, 16, 16, 3], 2 * 16 * 16 * 3)], [bytes(2 * 16 * 16 * 3)]
    put(sub, "task_result_images", worker, envelope("task_result", msg((1, 2), (2, "job-000001"), (3, True)), b), fr)
    put(sub, "task_result_failed", worker,
        envelope("task_result", msg((1, 1), (2, "job-000001"), (3, False), (4, "out of memory"))))
    put(sub, "heartbeat", worker, envelope("heartbeat", msg((1, "busy task 3"), (2, "0.0123456789abcdef"))))
    put(sub, "goodbye", worker, envelope("goodbye", msg((1, "stopped (SIGTERM)"))))
    put(sub, "error", worker, envelope("error", msg((1, "cannot load the model"), (2, True))))
    put(sub, "hello_worker", worker, envelope("hello", msg((1, 1), (2, "w2"), (3, "0123456789abcdef"),
                                                           (4, "exact"), (7, 2), (8, "fedcba9876543210"),
                                                           (9, "pndm"), (10, 4), (11, "/models/x"))))
    put(sub, "hello_ps", ps_, envelope("hello", msg((1, 2), (2, "p2"), (5, "tcp://127.0.0.1:7000"), (7, 1))))
    put(sub, "ps_loaded", ps_, envelope("ps_loaded", msg((1, "job-000001"), (2, 0))))
    put(sub, "grad_ready", ps_, envelope("grad_ready", msg((1, "job-000001"), (2, 0), (3, [0, 1, 2]),
                                                         (4, [0.5, 0.25, 1.0]))))
    put(sub, "applied", ps_, envelope("applied", msg((1, "job-000001"), (2, 1))))
    b, fr = tensors(["p/", "m/", "v/"], [("unet.x.lora_A.weight", [1, 4])])
    put(sub, "state", ps_, envelope("state", msg((1, "job-000001"), (2, 1), (3, [0])), b), fr)
    put(sub, "wrong_version", client, envelope("status_request", msg(), version=2))


def worker():
    sub = "worker"
    shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    idle, jobdata = 0, 1
    job = ('{"pretrained_model_name_or_path": "tests/fixtures/tiny-sd", "instance_data_dir": "x", '
           '"instance_prompt": "a photo of sks robot", "resolution": 16, "max_train_steps": 2, "rank": 1}')
    prior_job = job[:-1] + (', "with_prior_preservation": true, "class_prompt": "a photo of robot", '
                            '"num_class_images": 2, "class_inference_steps": 1}')
    put(sub, "welcome", idle, envelope("welcome", msg((1, "w-9"), (2, 250))))
    put(sub, "error", idle, envelope("error", msg((1, "a note"))))
    put(sub, "release", idle, envelope("release", msg((1, "fzjob-1"))))
    put(sub, "heartbeat", idle, envelope("heartbeat", msg((1, "idle"))))
    put(sub, "late_job_data", idle, envelope("job_data", msg((1, "fzjob-1"), (2, job))))
    put(sub, "task_prepare", idle, envelope("task", msg((1, 900), (2, "job-x"), (3, 2), (4, job))))
    put(sub, "task_microbatch", idle, envelope("task", msg((1, 901), (2, "job-y"), (3, 3), (4, job), (7, 0),
                                                           (8, 0), (9, 0), (10, [msg((1, "tcp://127.0.0.1:9"))]))))
    put(sub, "task_bad_id", idle, envelope("task", msg((1, 902), (2, "../up"), (3, 3), (4, job))))
    put(sub, "task_kind_99", idle, envelope("task", msg((1, 903), (2, "job-z"), (3, 99))))
    png = open("tests/fixtures/images/gray.png", "rb").read()
    put(sub, "job_data_png", jobdata, envelope("job_data", msg((2, job), (3, 5)), [blob("gray.png", 1, [], len(png))]),
        [png])
    put(sub, "job_data_bad_name", jobdata,
        envelope("job_data", msg((2, job)), [blob("../gray.png", 1, [], len(png))]), [png])
    put(sub, "job_data_empty", jobdata, envelope("job_data", msg((2, job))))
    pri = open("tests/fuzz/corpus/h5/priors_sealed.h5", "rb").read()
    put(sub, "job_data_priors", jobdata,
        envelope("job_data", msg((2, prior_job)), [blob("gray.png", 1, [], len(png)), blob("priors.h5", 1, [], len(pri))]),
        [png, pri])
    put(sub, "job_data_wrong_data_h5", jobdata, envelope("job_data", msg((2, job)), [blob("data.h5", 1, [], len(pri))]),
        [pri])
    put(sub, "not_job_data", jobdata, envelope("welcome", msg((1, "w"))))

    # 2: the PS's answer to the worker's Pull of job fzps (rank 1, UNet only): every tensor, as
    # the tiny model's LoRA names them (tests/fuzz/worker_lora_names.txt), then broken variants
    pull_answer = 2
    names = [l.split() for l in open("tests/fuzz/worker_lora_names.txt")]
    blobs, frames = [], []
    for name, rows, cols in names:
        n = int(rows) * int(cols)
        blobs.append(blob(name, 0, [int(rows), int(cols)], 4 * n))
        frames.append(f32s([0.01 * (i % 7) for i in range(n)]))
    put(sub, "weights_all", pull_answer, envelope("weights", msg((1, "fzps"), (2, 0)), blobs), frames)
    put(sub, "weights_half", pull_answer, envelope("weights", msg((1, "fzps"), (2, 0)), blobs[:128]), frames[:128])
    bad = list(blobs)
    name, rows, cols = names[3]
    bad[3] = blob(name, 0, [int(cols), int(rows)], 4 * int(rows) * int(cols))
    put(sub, "weights_wrong_shape", pull_answer, envelope("weights", msg((1, "fzps"), (2, 0)), bad), frames)
    put(sub, "weights_later_version", pull_answer, envelope("weights", msg((1, "fzps"), (2, 5)), blobs), frames)
    put(sub, "ps_error", pull_answer, envelope("error", msg((1, "job not loaded here"))))


if __name__ == "__main__":
    ps()
    coordinator()
    worker()

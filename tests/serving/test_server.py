"""`irm serve` as a real process on 127.0.0.1, driven by the real `openai` client (and raw
HTTP for what a client library will not send), with a tiny host; the playground in a real
headless Chromium. One server process for the module."""

import json
import threading
import time

import httpx2 as httpx
import pytest
from server_process import irm_server

import irm
from conftest import CHROMIUM_ARGS, nontrivial_irm

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow
HOST = "tiny-random-llama"
N = 10
PROMPTS = [
    "What is the capital of France?",
    "Name a colour.",
    "Why is the sky blue?",
    "Hi",
    "Tell me about dogs",
    "x",
    "Another",
    "Last one",
]


@pytest.fixture(scope="module")
def host():
    return irm.load_host(HOST, device="cpu")


@pytest.fixture(scope="module")
def adapters(host, tmp_path_factory):
    folder = tmp_path_factory.mktemp("irms")
    made = {"a": nontrivial_irm(host, "1,2", seed=1, scale=4.0), "b": nontrivial_irm(host, "all", seed=2, scale=4.0)}
    return {name: (model, model.save_pretrained(folder / name)) for name, model in made.items()}


@pytest.fixture(scope="module")
def server(adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    args = ["--host", HOST, "--device", "cpu", "--max-batch", "8", "--max-queue", "16"]
    args += [f"--irm={name}={path}" for name, (_, path) in adapters.items()]
    with irm_server(args, log) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def reference(host, adapters, prompt, irm_name=None, strength=1.0, layers=None, chat=True):
    """What `irm generate` gives for the same settings (greedy)."""
    if irm_name is None or strength == 0:
        return irm.generate(host, [prompt], max_new_tokens=N, chat=chat)[0].text
    with irm.attach(host, adapters[irm_name][0], strength=strength, layers=layers):
        return irm.generate(host, [prompt], max_new_tokens=N, chat=chat)[0].text


def chat(client, prompt, model=HOST, **extra):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=N, temperature=0, extra_body=extra or None
    )
    return reply


def test_chat_and_completion_match_irm_generate(server, client, host, adapters):
    models = {m.id for m in client.models.list().data}
    assert models == {HOST, f"{HOST}+a", f"{HOST}+b"}
    prompt = PROMPTS[0]
    bare = chat(client, prompt)
    assert bare.object == "chat.completion" and bare.choices[0].message.role == "assistant"
    assert bare.choices[0].finish_reason in ("stop", "length") and bare.usage.completion_tokens <= N
    assert bare.choices[0].message.content.strip() == reference(host, adapters, prompt)
    # the IRM by model id and by extra_body; strength 0 is the bare host exactly
    by_model = chat(client, prompt, model=f"{HOST}+a", irm_strength=1.5).choices[0].message.content
    by_extra = chat(client, prompt, irm="a", irm_strength=1.5).choices[0].message.content
    assert by_model == by_extra == reference(host, adapters, prompt, "a", 1.5) != bare.choices[0].message.content
    assert chat(client, prompt, irm="b", irm_strength=0).choices[0].message.content == bare.choices[0].message.content
    layered = chat(client, prompt, irm="b", irm_layers="1-2").choices[0].message.content
    assert layered == reference(host, adapters, prompt, "b", 1.0, layers=[1, 2])
    # completions: the raw text after BOS, as `irm generate --no-chat` formats its prompt
    completion = client.completions.create(model=HOST, prompt=f"Question: {prompt}\nAnswer:", max_tokens=N, temperature=0)
    assert completion.object == "text_completion"
    assert completion.choices[0].text.strip() == reference(host, adapters, prompt, chat=False)


def test_streaming_chunks_equal_the_whole_answer(client):
    whole = chat(client, PROMPTS[2], irm="b", irm_strength=0.5).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=HOST,
            messages=[{"role": "user", "content": PROMPTS[2]}],
            max_tokens=N,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"irm": "b", "irm_strength": 0.5, "irm_record": "map"},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].model_extra["irm"]["layers"] == [0, 1, 2, 3]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished in (["length"], ["stop"]) and chunks[-1].usage.completion_tokens >= 1
    records = [r for c in chunks for r in (c.model_extra.get("irm_record") or [])]
    assert records and {"token_id", "token", "norm", "top", "map"} <= set(records[0])
    import base64

    assert len(base64.b64decode(records[0]["map"])) == 4 * 4 * 64  # float32 x 4 layers x hidden 64
    streamed = client.completions.create(model=HOST, prompt="Question: Hi\nAnswer:", max_tokens=N, temperature=0, stream=True)
    whole = client.completions.create(model=HOST, prompt="Question: Hi\nAnswer:", max_tokens=N, temperature=0)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    # a stop string ends the answer where it begins, streamed or not
    answer = whole.choices[0].text
    stop = answer[4:6]
    cut = answer[: answer.find(stop)]
    stopped = client.completions.create(model=HOST, prompt="Question: Hi\nAnswer:", max_tokens=N, temperature=0, stop=[stop, "\x00"])
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model=HOST, prompt="Question: Hi\nAnswer:", max_tokens=N, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == cut
    # irm_record on a plain answer: per-token norm and top indices
    plain = chat(client, PROMPTS[1], irm="a", irm_record=True).model_extra["irm"]
    assert len(plain["record"]) >= 1 and len(plain["record"][0]["top"]) == 8 and "map" not in plain["record"][0]


def test_eight_concurrent_clients_each_equal_to_solo(server, client, host, adapters):
    settings = [(None, 1.0), ("a", 1.0), ("b", 0.5), ("a", 0.0), ("b", 2.0), ("a", 1.5), (None, 1.0), ("b", 1.0)]
    solo = [chat(client, p, irm=name, irm_strength=s).choices[0].message.content for p, (name, s) in zip(PROMPTS, settings)]

    def sampled(api):
        messages = [{"role": "user", "content": PROMPTS[0]}]
        reply = api.chat.completions.create(model=HOST, messages=messages, max_tokens=N, temperature=0.9, seed=7, extra_body={"irm": "a"})
        return reply.choices[0].message.content

    sampled_solo = sampled(client)
    results: dict[int, str] = {}
    barrier = threading.Barrier(9)

    def one(i):
        own = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        barrier.wait()
        if i == 8:
            results[i] = sampled(own)
            return
        name, s = settings[i]
        results[i] = chat(own, PROMPTS[i], irm=name, irm_strength=s).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(8)] == solo
    assert results[8] == sampled_solo  # seeded sampling draws from the request's own generator
    for i in (1, 2, 5):  # and each equals `irm generate` with the same settings
        assert solo[i].strip() == reference(host, adapters, PROMPTS[i], *settings[i])
    batches = _metric(server, "irm_batch_size")
    assert batches["irm_batch_size_sum"] > batches["irm_batch_size_count"], "some decode steps must have batched several requests"


def _metric(server, family):
    """``{sample name: value}`` for unlabelled samples and ``{(name, ((label, value), ...)): value}``
    for labelled ones, parsed from GET /metrics with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    return {(s.name, tuple(sorted(s.labels.items()))) if s.labels else s.name: s.value for s in found[family].samples}


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    url = server.url + "/v1/chat/completions"
    ok = {"model": HOST, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({**ok, "model": "nope"}), 404, "model_not_found"),
        (json.dumps({**ok, "model": HOST + "+nope"}), 404, "model_not_found"),
        (json.dumps({**ok, "irm": "nope"}), 404, "irm_not_found"),
        (json.dumps({**ok, "irm": "a"}).replace('"irm": "a"', '"irm": "a", "irm_strength": NaN'), 422, "invalid_value"),
        (json.dumps({**ok, "irm": "a"}).replace('"irm": "a"', '"irm": "a", "irm_strength": Infinity'), 422, "invalid_value"),
        (json.dumps({**ok, "max_tokens": -5}), 422, "invalid_value"),
        (json.dumps({**ok, "max_tokens": 10**9}), 400, "context_length_exceeded"),
        (json.dumps({**ok, "messages": [{"role": "user", "content": "long " * 200}]}), 400, "context_length_exceeded"),
        (json.dumps({**ok, "irm": "a", "irm_layers": "0"}), 400, None),
        (json.dumps({**ok, "irm": "a", "irm_layers": "0-99"}), 400, None),
        (json.dumps({**ok, "messages": []}), 422, "invalid_value"),
        (json.dumps({**ok, "n": 2}), 422, "invalid_value"),
        (json.dumps({**ok, "messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]}), 400, None),
        (json.dumps({**ok, "logprobs": True}), 400, "unsupported_parameter"),
        (json.dumps({**ok, "logprobs": False, "stop": ["a", "b", "c", "d", "e"]}), 400, None),
    ]
    for body, status, code in cases:
        reply = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()["error"]
        assert error["message"] and error["type"] and (code is None or error["code"] == code), (body, error)
    assert httpx.get(server.url + "/nope").json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        chat(client, "Hi", model="gpt-4")
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=HOST, messages=[{"role": "user", "content": "Hi"}], max_tokens=0)
    assert chat(client, "Hi").choices[0].message.content is not None
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_disconnect_mid_stream_frees_the_slot(server):
    before = _generated(server)
    body = {"model": HOST, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as reply:
        lines = reply.iter_lines()
        seen = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in seen)
        assert httpx.get(server.url + "/health").json()["active"] == 1
    start = time.time()
    while httpx.get(server.url + "/health").json()["active"] and time.time() - start < 5:
        time.sleep(0.02)
    freed = time.time() - start
    assert httpx.get(server.url + "/health").json()["active"] == 0
    time.sleep(0.3)
    generated = _generated(server) - before
    assert freed < 2 and generated < 300, (freed, generated)
    # a plain (non-streaming) request whose client gives up is dropped too
    before = _generated(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=httpx.Timeout(5, read=0.3))
    start = time.time()
    while httpx.get(server.url + "/health").json()["active"] and time.time() - start < 5:
        time.sleep(0.02)
    assert httpx.get(server.url + "/health").json()["active"] == 0 and time.time() - start < 2
    time.sleep(0.3)
    assert _generated(server) - before < 400  # greedy "Hi" runs to max_tokens when nobody stops it


def _generated(server):
    return sum(v for k, v in _metric(server, "irm_generated_tokens").items() if k[0] == "irm_generated_tokens_total")


def test_metrics_are_prometheus_text(server):
    requests = _metric(server, "irm_requests")
    assert requests[("irm_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "200")))] >= 1
    assert any(k[0] == "irm_requests_total" and ("status", "404") in k[1] for k in requests if isinstance(k, tuple))
    for family in (
        "irm_queue_depth",
        "irm_active_requests",
        "irm_request_latency_seconds",
        "irm_time_to_first_token_seconds",
        "irm_prompt_tokens",
    ):
        assert _metric(server, family)
    assert _metric(server, "irm_request_latency_seconds")["irm_request_latency_seconds_count"] >= 1


def test_playground_in_headless_chromium(server, client, tmp_path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed and could not be installed (make test tries apt-get)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 950})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#irm').options.length === 2")
        page.fill("#prompt", "Why is the sky blue?")
        page.focus("#strength")
        for _ in range(5):
            page.keyboard.press("ArrowRight")  # 1.0 -> 1.5, and the page runs both streams again
        done = "() => ['#host-status', '#irm-status'].every(s => document.querySelector(s).textContent.startsWith('done'))"
        page.wait_for_function(f"() => document.querySelector('#irm-title').textContent.includes('1.5') && ({done})()", timeout=30_000)
        host_text = page.inner_text("#host-text")
        irm_text = page.eval_on_selector_all("#irm-text span.token", "spans => spans.map(s => s.textContent).join('')")
        canvas = page.locator("#heatmap canvas")
        box = canvas.bounding_box()
        coloured = page.evaluate(
            """() => { const c = document.querySelector('#heatmap canvas'); const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < px.length; i += 4) if (px[i + 3] && px[i] + px[i + 1] + px[i + 2] < 600) n++; return n; }"""
        )
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        hover = page.get_attribute("#heatmap", "data-hover")
        mean_title = page.inner_text("#showing")
        page.hover("#irm-text span.token >> nth=1")
        token_title = page.inner_text("#showing")
        page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    expected = client.chat.completions.create(
        model=HOST,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=48,
        temperature=0,
        extra_body={"irm": "a", "irm_strength": 1.5},
    )
    assert irm_text == expected.choices[0].message.content and host_text.strip() and irm_text != host_text
    assert coloured > 2000 and hover and hover.startswith("layer ") and " index " in hover and " value " in hover
    assert "mean" in mean_title and "token 1" in token_title
    assert shot.stat().st_size > 20_000


def test_api_key_full_queue_and_sigterm_drain(adapters, tmp_path):
    """Its own server: --api-key, one slot and one queue place; then SIGTERM mid-stream."""
    import signal

    key = "s3cret"
    args = ["--host", HOST, "--device", "cpu", "--api-key", key, "--max-batch", "1", "--max-queue", "1", f"--irm=a={adapters['a'][1]}"]
    with irm_server(args, tmp_path / "serve.log") as server:
        for path in ("/", "/v1/models", "/metrics", "/assets/heatmap.js"):
            assert httpx.get(server.url + path).status_code == 401
            assert httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        denied = httpx.post(server.url + "/v1/chat/completions", json={"model": HOST, "messages": []})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.url + "/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        api = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)
        assert chat(api, "Hi", irm="a").choices[0].finish_reason in ("stop", "length")

        outcomes: list[object] = []
        barrier = threading.Barrier(4)

        def busy():
            barrier.wait()
            try:
                outcomes.append(api.completions.create(model=HOST, prompt="Hi", max_tokens=60, temperature=0).choices[0].finish_reason)
            except openai.RateLimitError as exc:
                outcomes.append(exc.body["code"] if isinstance(exc.body, dict) else exc.body)

        threads = [threading.Thread(target=busy) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert "queue_full" in outcomes and outcomes.count("length") >= 1, outcomes

        # SIGTERM while a stream is running: the stream ends normally, then the process exits 0
        stream = api.chat.completions.create(
            model=HOST, messages=[{"role": "user", "content": "Hi"}], max_tokens=60, temperature=0, stream=True
        )
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        server.proc.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert rest[-1].choices[0].finish_reason == "length"
        # uvicorn re-raises the signal once drained: the conventional exit status of SIGTERM
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in server.output()
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/health")

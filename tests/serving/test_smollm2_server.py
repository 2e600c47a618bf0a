"""`irm serve` end to end on the real SmolLM2: the bare host answers, an IRM's answer is
`irm generate`'s, and two requests batched together (bare and IRM) each give their solo answer."""

import threading

import pytest
from server_process import irm_server

import irm
from conftest import nontrivial_irm

openai = pytest.importorskip("openai")

N = 8
QUESTION = "What is the capital of France?"


@pytest.mark.slow
def test_smollm2_serve_end_to_end(smollm2, tmp_path):
    steer = nontrivial_irm(smollm2, "2,3", scale=8.0)
    folder = steer.save_pretrained(tmp_path / "steer")
    with irm.attach(smollm2, steer, strength=0.5):
        expected_irm = irm.generate(smollm2, [QUESTION], max_new_tokens=N)[0].text
    expected_bare = irm.generate(smollm2, [QUESTION], max_new_tokens=N)[0].text
    assert "Paris" in expected_bare and expected_irm != expected_bare

    with irm_server(["--device", "cpu", f"--irm=steer={folder}"], tmp_path / "serve.log", timeout=180) as server:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(client, model):
            messages = [{"role": "user", "content": QUESTION}]
            reply = client.chat.completions.create(
                model=model, messages=messages, max_tokens=N, temperature=0, extra_body={"irm_strength": 0.5}
            )
            return reply.choices[0].message.content

        assert [m.id for m in api.models.list().data] == ["smollm2-135m-instruct", "smollm2-135m-instruct+steer"]
        together: dict[str, str] = {}
        barrier = threading.Barrier(2)

        def run(model):
            own = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            barrier.wait()
            together[model] = ask(own, model)

        threads = [threading.Thread(target=run, args=(m,)) for m in ("smollm2-135m-instruct", "smollm2-135m-instruct+steer")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alone = {m: ask(api, m) for m in together}
    assert alone["smollm2-135m-instruct"].strip() == together["smollm2-135m-instruct"].strip() == expected_bare
    assert alone["smollm2-135m-instruct+steer"].strip() == together["smollm2-135m-instruct+steer"].strip() == expected_irm

"""The app under awkward uploads and under load: every request answered, the server stays up."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from conftest import awkward_uploads


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server["url"], verbose=False)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    return awkward_uploads(tmp_path_factory.mktemp("uploads"))


@pytest.mark.parametrize("name", ["text-renamed-png", "truncated-jpeg", "1x1", "16-bit-png", "cmyk-jpeg", "rgba-png",
                                  "exif-rotated", "20000x20000"])
def test_each_awkward_upload_gets_a_message_or_a_prediction(client, uploads, name):
    path, message = uploads[name]
    if message is None:
        fg, bg, ref = client.predict(handle_file(str(path)), api_name="/predict")
        assert len(fg["confidences"]) == 5 and len(bg["confidences"]) == 10
    else:
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(path)), api_name="/predict")
    # ... and the app answers the next request
    fg, _, _ = client.predict(handle_file(str(uploads["rgba-png"][0])), api_name="/predict")
    assert fg["label"]


def test_32_concurrent_predictions_all_succeed(client, uploads):
    """32 requests in flight at once (the queue holds up to 32; predictions run 4 at a time)."""
    photo = handle_file(str(uploads["cmyk-jpeg"][0]))
    jobs = [client.submit(photo, api_name="/predict") for _ in range(32)]
    results = [job.result(timeout=300) for job in jobs]
    assert len(results) == 32 and all(len(r[1]["confidences"]) == 10 for r in results)

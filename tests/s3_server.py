"""A real S3-compatible server (moto) on 127.0.0.1 for object-storage tests.

Import the fixtures into a ``conftest.py`` to use them::

    from tests.s3_server import s3_bucket, s3_server  # noqa: F401

``s3_server`` starts one server per test session and exports the standard
AWS variables (and GDAL's ``/vsis3/`` settings) into ``os.environ``, so that
s3fs, obstore, GDAL and Dask worker processes started afterwards all reach
it. ``s3_bucket`` creates an empty bucket per test and returns its name.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cluster.environment import environment_variables

S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "AWS_HTTPS": "NO",
    "AWS_VIRTUAL_HOSTING": "FALSE",
    "AWS_NO_SIGN_REQUEST": "NO",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and point the AWS environment at it.

    Yields the endpoint URL, e.g. ``"http://127.0.0.1:51234"``. The previous
    values of the variables are restored at the end of the session.
    """
    server_module = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    settings = {
        **S3_TEST_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_S3_ENDPOINT": f"{host}:{port}",
    }
    try:
        with environment_variables(settings):
            yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """Create an empty, uniquely named bucket on the test server and return its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name

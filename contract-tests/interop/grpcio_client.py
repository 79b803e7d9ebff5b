"""Interop: Python grpcio calling the protocol test service over gRPC.

Run by crates/platform/tests/interop_clients.rs:
    python grpcio_client.py <host:port> <dir with generated echo_pb2.py / echo_pb2_grpc.py>
"""

import sys
import time

target, generated = sys.argv[1], sys.argv[2]
sys.path.insert(0, generated)

import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from protocol.test.v1 import echo_pb2, echo_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel(target)
stub = echo_pb2_grpc.EchoServiceStub(channel)

# Unary with metadata both ways.
response, call = stub.Echo.with_call(
    echo_pb2.EchoRequest(text="from python", big_number=-42), metadata=[("x-echo", "grpcio")]
)
assert response.text == "from python" and response.big_number == -42, response
assert ("x-echo", "grpcio") in call.initial_metadata(), call.initial_metadata()

# Error details.
try:
    stub.Fail(echo_pb2.FailRequest(code=9, message="closed store"))
    raise AssertionError("Fail did not fail")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.code()
    assert error.details() == "closed store", error.details()
    raw = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info), status
    assert info.reason == "TEST_FAILURE" and info.domain == "protocol.test", info

# Deadline.
started = time.monotonic()
try:
    stub.Sleep(echo_pb2.SleepRequest(millis=3000), timeout=0.2)
    raise AssertionError("Sleep beat its deadline")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.code()
assert time.monotonic() - started < 2.5

# Cancellation.
future = stub.Sleep.future(echo_pb2.SleepRequest(millis=3000))
time.sleep(0.1)
assert future.cancel()
try:
    future.result()
    raise AssertionError("cancelled call returned")
except grpc.FutureCancelledError:
    pass

# Server stream.
numbers = [message.number for message in stub.Count(echo_pb2.CountRequest(up_to=3))]
assert numbers == [1, 2, 3], numbers

print("ok grpcio")

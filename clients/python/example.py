"""Quickstart (docs/clients.md): enrol a loyalty member, add a welcome bonus, print the balance.

    clients/python/generate
    COMMERCE_URL=http://127.0.0.1:8080 COMMERCE_TOKEN=$(commerce token) \
        PYTHONPATH=clients/python/gen .venv/bin/python clients/python/example.py
"""

import os
from urllib.parse import urlsplit

import grpc
from commerce.loyalty.v1 import member_service_pb2 as members, member_service_pb2_grpc
from commerce.loyalty.v1 import points_service_pb2 as points, points_service_pb2_grpc

url = urlsplit(os.environ.get("COMMERCE_URL", "http://127.0.0.1:8080"))
auth = [("authorization", f"Bearer {os.environ['COMMERCE_TOKEN']}")]
with (
    grpc.secure_channel(url.netloc, grpc.ssl_channel_credentials())
    if url.scheme == "https"
    else grpc.insecure_channel(url.netloc)
) as channel:
    member_stub = member_service_pb2_grpc.MemberServiceStub(channel)
    # EnrollMember is idempotent by customer id: enrolling again returns the same member.
    customer_id = os.environ.get("COMMERCE_CUSTOMER", "cust-quickstart")
    enrolled = member_stub.EnrollMember(
        members.EnrollMemberRequest(customer_id=customer_id, registered=True), metadata=auth, timeout=5
    )
    member_id = enrolled.member.member_id
    # AdjustPoints requires an idempotency key: a retry with the same key is replayed, not re-applied.
    points_service_pb2_grpc.PointsServiceStub(channel).AdjustPoints(
        points.AdjustPointsRequest(member_id=member_id, points=100, reason="welcome bonus"),
        metadata=auth + [("idempotency-key", f"welcome-{member_id}")],
        timeout=5,  # seconds: the deadline, sent as grpc-timeout
    )
    balance = member_stub.GetBalance(members.GetBalanceRequest(member_id=member_id), metadata=auth, timeout=5).balance
    print(f"member {member_id}: {balance.available_points} points available")

"""The server as generic gRPC tools see it: health checking and server reflection.

Starts the real apeserve binary on a free loopback port and talks to it only through
what any client can discover (grpcurl-style), with Python's grpcio. Run by CTest,
which sets APESERVE_BINARY and APESERVE_TEST_MODEL.
"""

import os
import tempfile
import unittest
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from apeserve_process import ApeserveProcess


class GrpcSurfaceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="apeserve-py-")
        cls.server = ApeserveProcess(Path(cls.tmp.name))
        cls.channel = grpc.insecure_channel(cls.server.address)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def test_health_reports_serving(self):
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)

    def test_reflection_lists_the_services(self):
        database = ProtoReflectionDescriptorDatabase(self.channel)
        services = set(database.get_services())
        self.assertIn("ape.v1.AdminService", services)
        self.assertIn("grpc.health.v1.Health", services)

    def test_reflection_is_enough_to_call_the_admin_service(self):
        # What grpcurl does: fetch descriptors from the server, build messages from them.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        method = pool.FindServiceByName("ape.v1.AdminService").FindMethodByName("GetServerInfo")
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            "/ape.v1.AdminService/GetServerInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply_class.FromString,
        )
        info = call(request_class(), timeout=10)
        self.assertEqual(info.device, "cpu")
        self.assertEqual(info.model.format, "gguf")
        self.assertEqual(info.model.path, os.environ["APESERVE_TEST_MODEL"])
        self.assertEqual(info.model.size_bytes, os.path.getsize(os.environ["APESERVE_TEST_MODEL"]))


if __name__ == "__main__":
    unittest.main(verbosity=2)

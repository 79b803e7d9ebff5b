// Errors (docs/clients.md): a refused call's code and ErrorInfo reason, on every protocol.
//   COMMERCE_URL=http://127.0.0.1:8080 COMMERCE_TOKEN=$(commerce token) node dist/examples/errors.js
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { errorInfo, PointsService } from "@commerce/api-client";

const baseUrl = process.env.COMMERCE_URL ?? "http://127.0.0.1:8080";
const headers = { authorization: `Bearer ${process.env.COMMERCE_TOKEN}` };
const transports: Record<string, Transport> = {
  connect: createConnectTransport({ baseUrl, httpVersion: "1.1" }),
  grpc: createGrpcTransport({ baseUrl }),
  "grpc-web": createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
};
for (const [protocol, transport] of Object.entries(transports)) {
  // AdjustPoints requires an idempotency-key header: without one it is refused before it runs.
  const points = createClient(PointsService, transport);
  const request = { memberId: "m-unknown", points: 1n, reason: "no key sent" };
  try {
    await points.adjustPoints(request, { headers, timeoutMs: 5_000 });
    console.log(`${protocol}: accepted?`);
  } catch (err) {
    const error = ConnectError.from(err);
    const info = errorInfo(error);
    console.log(`${protocol}: ${Code[error.code]} ${info?.reason} ${info?.domain}`);
  }
}

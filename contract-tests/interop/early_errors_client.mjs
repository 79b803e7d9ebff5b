// Interop: calls refused before the server reads their body (no token, rate limit, overload,
// unknown method) must reach @connectrpc/connect-node with their real code and ErrorInfo reason
// over HTTP/1.1 — not `internal: write EPIPE` because the server closed the connection while the
// client was still sending. Run by crates/platform/tests/interop_clients.rs:
//   node early_errors_client.mjs <base-url> <dir with generated code> <cases JSON>
// cases: [{"name", "method": "echo"|"haunt", "token"?, "payloadBytes", "code", "reason"?}]
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

const [baseUrl, generatedDir, casesJson] = process.argv.slice(2);
const { EchoService } = await import(pathToFileURL(`${generatedDir}/protocol/test/v1/echo_pb.js`).href);
const { GhostService } = await import(pathToFileURL(`${generatedDir}/protocol/ghost/v1/ghost_pb.js`).href);

const transports = {
  "grpc-web-h1": createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
  "connect-proto-h1": createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true }),
};

/// The `reason` of a google.rpc.ErrorInfo detail (field 1, a string), decoded by hand.
function errorInfoReason(error) {
  const detail = error.details.find((d) => (d.desc?.typeName ?? d.type) === "google.rpc.ErrorInfo");
  if (!detail) return undefined;
  const bytes = detail.value;
  let at = 0;
  while (at < bytes.length) {
    const tag = bytes[at++];
    let length = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[at++];
      length |= (byte & 0x7f) << shift;
      if (byte < 0x80) break;
    }
    if (tag === 0x0a) return new TextDecoder().decode(bytes.subarray(at, at + length));
    at += length;
  }
  return undefined;
}

for (const testCase of JSON.parse(casesJson)) {
  for (const [transportName, transport] of Object.entries(transports)) {
    const what = `${testCase.name} over ${transportName}`;
    const headers = testCase.token ? { authorization: `Bearer ${testCase.token}` } : {};
    const request = { text: what, payload: new Uint8Array(testCase.payloadBytes).fill(7) };
    const call =
      testCase.method === "haunt"
        ? createClient(GhostService, transport).haunt(request, { headers })
        : createClient(EchoService, transport).echo(request, { headers });
    await assert.rejects(call, (err) => {
      const error = ConnectError.from(err);
      assert.equal(Code[error.code], testCase.code, `${what}: ${error.message}`);
      assert.equal(errorInfoReason(error), testCase.reason, `${what}: ErrorInfo reason`);
      return true;
    });
    console.log(`ok ${what}`);
  }
}

// Interop: @connectrpc/connect-node calling the protocol test service over Connect (JSON and
// binary, HTTP/1.1 and HTTP/2), gRPC and gRPC-web. Run by crates/platform/tests/interop_clients.rs:
//   node connect_node_client.mjs <base-url> <dir with generated echo_pb.js>
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

const [baseUrl, generatedDir] = process.argv.slice(2);
const { EchoService } = await import(pathToFileURL(`${generatedDir}/protocol/test/v1/echo_pb.js`).href);

const transports = {
  "connect-json-h1": createConnectTransport({ baseUrl, httpVersion: "1.1" }),
  "connect-binary-h2": createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
  "connect-get-h1": createConnectTransport({ baseUrl, httpVersion: "1.1", useHttpGet: true }),
  "grpc": createGrpcTransport({ baseUrl }),
  "grpc-web": createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
};

for (const [name, transport] of Object.entries(transports)) {
  const client = createClient(EchoService, transport);

  // Unary success with int64, enum and headers.
  let echoedHeader;
  const echoed = await client.echo(
    { text: `hello over ${name}`, bigNumber: 9007199254740993n, mood: 1 },
    { headers: { "x-echo": name }, onHeader: (headers) => (echoedHeader = headers.get("x-echo")) },
  );
  assert.equal(echoed.text, `hello over ${name}`, name);
  assert.equal(echoed.bigNumber, 9007199254740993n, name);
  assert.equal(echoed.mood, 1, name);
  assert.equal(echoedHeader, name, `${name}: response header`);

  // Error with details.
  await assert.rejects(client.fail({ code: 5, message: "missing order" }), (err) => {
    const error = ConnectError.from(err);
    assert.equal(error.code, Code.NotFound, name);
    assert.equal(error.rawMessage, "missing order", name);
    assert.deepEqual(error.details.map((detail) => detail.type), ["google.rpc.ErrorInfo", "google.rpc.BadRequest"], name);
    return true;
  });

  // Deadline.
  const started = Date.now();
  await assert.rejects(client.sleep({ millis: 3000n }, { timeoutMs: 200 }), (err) => {
    assert.equal(ConnectError.from(err).code, Code.DeadlineExceeded, name);
    return true;
  });
  assert.ok(Date.now() - started < 2500, `${name}: deadline took ${Date.now() - started} ms`);

  // Server stream.
  const numbers = [];
  for await (const message of client.count({ upTo: 3 })) numbers.push(message.number);
  assert.deepEqual(numbers, [1, 2, 3], name);

  console.log(`ok ${name}`);
}

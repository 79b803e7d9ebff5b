// Quickstart (docs/clients.md): enrol a loyalty member, add a welcome bonus, print the balance.
//   COMMERCE_URL=http://127.0.0.1:8080 COMMERCE_TOKEN=$(commerce token) npm run quickstart
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { MemberService, PointsService } from "@commerce/api-client";

const bearer: Interceptor = (next) => (req) => {
  req.header.set("authorization", `Bearer ${process.env.COMMERCE_TOKEN}`);
  return next(req);
};
const transport = createConnectTransport({
  baseUrl: process.env.COMMERCE_URL ?? "http://127.0.0.1:8080",
  httpVersion: "2",
  interceptors: [bearer],
});
const members = createClient(MemberService, transport);
const deadline = { timeoutMs: 5_000 }; // sent as connect-timeout-ms

// EnrollMember is idempotent by customer id: enrolling again returns the same member.
const customerId = process.env.COMMERCE_CUSTOMER ?? "cust-quickstart";
const { member } = await members.enrollMember({ customerId, registered: true }, deadline);
const memberId = member!.memberId;
// AdjustPoints requires an idempotency key: a retry with the same key is replayed, not re-applied.
await createClient(PointsService, transport).adjustPoints(
  { memberId, points: 100n, reason: "welcome bonus" },
  { ...deadline, headers: { "idempotency-key": `welcome-${memberId}` } },
);
const { balance } = await members.getBalance({ memberId }, deadline);
console.log(`member ${memberId}: ${balance?.availablePoints} points available`);

// Reading the platform's errors: every refusal carries a google.rpc.ErrorInfo whose `reason` is a
// `commerce.common.v1.ErrorReason` name without its prefix (e.g. `IDEMPOTENCY_KEY_REQUIRED`), and
// whose `domain` is the service's error domain. The generated code has no google.rpc types, so
// ErrorInfo (reason = 1, domain = 2, map<string, string> metadata = 3) is decoded here.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

/** A `google.rpc.ErrorInfo`. */
export interface ErrorInfo {
  /** `commerce.common.v1.ErrorReason` without `ERROR_REASON_`, e.g. `RESOURCE_NOT_FOUND`. */
  reason: string;
  /** The service's error domain, e.g. `loyalty.commerce.dev`. */
  domain: string;
  /** Details of the reason, e.g. `missing_scopes` or `idempotency_key`. */
  metadata: Record<string, string>;
}

/**
 * The ErrorInfo of an error thrown by a @connectrpc/connect client (any protocol: the details
 * arrive as `{ type, value }`), or undefined when it has none.
 */
export function errorInfo(error: unknown): ErrorInfo | undefined {
  const details: unknown = (error as { details?: unknown } | null)?.details;
  if (!Array.isArray(details)) return undefined;
  for (const detail of details as { type?: unknown; value?: unknown }[]) {
    if (detail.type === "google.rpc.ErrorInfo" && detail.value instanceof Uint8Array) {
      return decodeErrorInfo(detail.value);
    }
  }
  return undefined;
}

function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) info.reason = reader.string();
    else if (field === 2 && wireType === WireType.LengthDelimited) info.domain = reader.string();
    else if (field === 3 && wireType === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [entryField, entryWireType] = entry.tag();
        if (entryField === 1 && entryWireType === WireType.LengthDelimited) key = entry.string();
        else if (entryField === 2 && entryWireType === WireType.LengthDelimited) value = entry.string();
        else entry.skip(entryWireType, entryField);
      }
      info.metadata[key] = value;
    } else reader.skip(wireType, field);
  }
  return info;
}

// A failed call as a sentence for the customer: the platform's google.rpc.ErrorInfo `reason`
// (commerce.common.v1.ErrorReason without its prefix) picks it; a raw code is never shown.
import { Code, ConnectError } from "@connectrpc/connect";
import { errorInfo, type ErrorInfo } from "@commerce/api-client";

type Sentence = string | ((info: ErrorInfo) => string);

const SENTENCES: Record<string, Sentence> = {
  PAYMENT_DECLINED: "Your card was declined. Please use another card or payment method.",
  PAYMENT_REFUSED: "The payment couldn't be processed. Please try another card.",
  PAYMENT_OUTCOME_UNKNOWN:
    "We couldn't confirm your payment yet. Please try again in a moment — you won't be charged twice.",
  CARD_DATA_REJECTED: "Please pay with a saved card, not a card number.",
  SLOT_FULL: (info) => {
    const next = info.metadata["next_available_time"];
    return next
      ? `That pickup time just filled up. The next available time is ${new Date(next).toLocaleTimeString([], { hour: "numeric", minute: "2-digit" })}.`
      : "That pickup time just filled up. Please try a later time.";
  },
  STORE_CLOSED: "This store is closed at that time. Please choose another time or store.",
  QUOTE_STALE: "Your total changed since we showed it. Please review the new total and place the order again.",
  CART_EXPIRED: "Your cart expired after a while without changes. Please start a new order.",
  CART_EMPTY: "Your cart is empty. Add something first.",
  CART_ALREADY_ORDERED: "This cart has already been ordered. Start a new order to order again.",
  ITEM_UNAVAILABLE: "Sorry, that item isn't available at this store right now.",
  MODIFIER_SELECTION_INVALID: "Those choices don't work for that item. Please check the options.",
  FULFILLMENT_INVALID: "That pickup option isn't offered at this store.",
  PROMOTION_INVALID: "That promotion code can't be used for this order.",
  TAX_UNAVAILABLE: "We couldn't price your order right now. Please try again shortly.",
  PLACEMENT_ABANDONED: "That order attempt took too long and was stopped. Please place the order again.",
  INSUFFICIENT_POINTS: "You don't have enough points for that reward yet.",
  REWARD_UNAVAILABLE: "That reward isn't available right now.",
  MEMBER_NOT_REGISTERED: "Please finish your loyalty registration to use rewards.",
  REDEMPTION_ALREADY_RESOLVED: "That reward was already used.",
  TOKEN_EXPIRED: "Your session expired. Please sign in again.",
  TOKEN_MISSING: "Please sign in first.",
  TOKEN_INVALID: "Your session isn't valid anymore. Please sign in again.",
  SCOPE_MISSING: "Your account can't do that.",
  CUSTOMER_NOT_ALLOWED: "Your account can't do that.",
  RESOURCE_NOT_FOUND: "We couldn't find that anymore. Please refresh the page.",
  RATE_LIMITED: "You're going a bit fast. Please wait a few seconds and try again.",
  OVERLOADED: "We're very busy right now. Please try again in a few seconds.",
  DEPENDENCY_UNAVAILABLE: "Part of our service is unavailable right now. Please try again shortly.",
  SERVER_SHUTTING_DOWN: "We're restarting. Please try again in a few seconds.",
  DEADLINE_EXCEEDED: "That took too long. Please try again.",
  IDEMPOTENCY_KEY_IN_USE: "Your order is still being placed. One moment…",
  IDEMPOTENCY_KEY_REUSED: "That request changed while it was being retried. Please try again.",
  CONCURRENT_MODIFICATION: "Your cart changed in another window. Please try again.",
  VALIDATION_FAILED: "Some details aren't valid. Please check them and try again.",
};

/** Failures after which the same request may have run: retry with the same idempotency key. */
export function isAmbiguous(err: unknown): boolean {
  const error = ConnectError.from(err);
  const reason = errorInfo(error)?.reason;
  if (reason) return reason === "PAYMENT_OUTCOME_UNKNOWN" || reason === "IDEMPOTENCY_KEY_IN_USE";
  return [Code.Unknown, Code.Unavailable, Code.DeadlineExceeded, Code.Canceled, Code.Internal].includes(error.code);
}

/** The sentence to show for `err`. */
export function sentence(err: unknown): string {
  const error = ConnectError.from(err);
  const info = errorInfo(error);
  const known = info && SENTENCES[info.reason];
  if (known) return typeof known === "function" ? known(info) : known;
  switch (error.code) {
    case Code.DeadlineExceeded:
      return "The ordering service took too long to answer. Please try again.";
    case Code.Unauthenticated:
      return "Please sign in again.";
    case Code.PermissionDenied:
      return "Your account can't do that.";
    case Code.NotFound:
      return "We couldn't find that. Please check and try again.";
    case Code.Unknown:
    case Code.Unavailable:
      // fetch failed (offline, blocked by CORS, server down) or the service is unavailable.
      if (!info) return "We couldn't reach the ordering service. Check your connection and try again.";
      return "The ordering service is unavailable right now. Please try again shortly.";
    default:
      return "Something went wrong on our side. Please try again.";
  }
}

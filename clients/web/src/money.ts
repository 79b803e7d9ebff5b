// Money as the platform sends it: integer minor units (int64 → bigint) and an ISO 4217 code.
// Formatted with integer arithmetic only, so every cent shown is the cent the server computed.

/** Minor-unit digits of the currencies the demo may meet; ISO 4217 default is 2. */
const EXPONENT: Record<string, number> = { JPY: 0, KRW: 0, BHD: 3, KWD: 3, JOD: 3 };
const SYMBOL: Record<string, string> = { USD: "$", EUR: "€", GBP: "£", CAD: "CA$", JPY: "¥" };

export interface MoneyLike {
  currencyCode: string;
  amountMinor: bigint;
}

/** e.g. `{USD, 1234n}` → `$12.34`, `{USD, -200n}` → `-$2.00`, `{JPY, 500n}` → `¥500`. */
export function formatMoney(money: MoneyLike | undefined, fallbackCurrency = "USD"): string {
  const currency = money?.currencyCode || fallbackCurrency;
  const minor = money?.amountMinor ?? 0n;
  const exponent = EXPONENT[currency] ?? 2;
  const negative = minor < 0n;
  const digits = (negative ? -minor : minor).toString().padStart(exponent + 1, "0");
  const whole = digits.slice(0, digits.length - exponent).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const fraction = exponent > 0 ? "." + digits.slice(digits.length - exponent) : "";
  const symbol = SYMBOL[currency];
  const amount = symbol ? `${symbol}${whole}${fraction}` : `${whole}${fraction} ${currency}`;
  return negative ? `-${amount}` : amount;
}

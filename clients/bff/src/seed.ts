// Seeds the demo tenant on start, idempotently: every create carries a fixed idempotency key (the
// platform derives the id from it), so a restart finds what the first start made. Like
// `commerce demo` (services/commerce/src/demo.rs) it never touches the tenant clock.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DayOfWeek,
  FulfillmentMode,
  type MenuItem,
  type Reward,
} from "@commerce/api-client";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { MenuItemSchema, RewardSchema } from "@commerce/api-client";
import { bearer, options, type Outgoing, type Platform } from "./platform.js";

/** The demo customers SignIn accepts (a real deployment verifies an IdP's ID token instead). */
export const DEMO_CUSTOMERS: Record<string, string> = {
  ada: "Ada Lovelace",
  ben: "Ben Franklin",
};

/** Points every demo customer is topped up to when below (rewards cost 150 and 250). */
const TOP_UP_BELOW = 600n;
const TOP_UP_POINTS = 1000n;

const usd = (amountMinor: number) => ({ currencyCode: "USD", amountMinor: BigInt(amountMinor) });

const option = (optionId: string, displayName: string, price: number, defaultSelected = false) => ({
  optionId,
  displayName,
  price: price > 0 ? usd(price) : undefined,
  defaultSelected,
  available: true,
});

const size = (regularDefault: boolean, large: number) => ({
  groupId: "size",
  displayName: "Size",
  minSelections: 1,
  maxSelections: 1,
  options: [option("regular", "Regular", 0, regularDefault), option("large", "Large", large)],
});

const extras = (...options: ReturnType<typeof option>[]) => ({
  groupId: "extras",
  displayName: "Extras",
  minSelections: 0,
  maxSelections: 2,
  options,
});

/** The menu: every item has a required single-choice Size and optional Extras (up to two). */
const ITEMS: Record<string, MessageInitShape<typeof MenuItemSchema>> = {
  coffee: {
    sku: "COFFEE",
    displayName: "Drip coffee",
    description: "House blend, brewed all day.",
    category: "drinks",
    taxCategory: "prepared_food",
    basePrice: usd(350),
    modifierGroups: [
      size(true, 75),
      extras(option("oat-milk", "Oat milk", 60), option("extra-shot", "Extra shot", 90), option("vanilla", "Vanilla syrup", 50)),
    ],
    active: true,
  },
  latte: {
    sku: "LATTE",
    displayName: "Latte",
    description: "Double shot, steamed milk. Pick a size.",
    category: "drinks",
    taxCategory: "prepared_food",
    basePrice: usd(495),
    // No default size: the page keeps "Add" disabled until one is chosen.
    modifierGroups: [
      size(false, 100),
      extras(option("oat-milk", "Oat milk", 60), option("extra-shot", "Extra shot", 90), option("vanilla", "Vanilla syrup", 50)),
    ],
    active: true,
  },
  tea: {
    sku: "TEA",
    displayName: "Green tea",
    description: "Sencha, steeped to order.",
    category: "drinks",
    taxCategory: "prepared_food",
    basePrice: usd(295),
    modifierGroups: [size(true, 50), extras(option("honey", "Honey", 25), option("lemon", "Lemon", 0))],
    active: true,
  },
  croissant: {
    sku: "CROISSANT",
    displayName: "Butter croissant",
    description: "Baked this morning.",
    category: "bakery",
    taxCategory: "prepared_food",
    basePrice: usd(375),
    modifierGroups: [
      {
        groupId: "size",
        displayName: "Size",
        minSelections: 1,
        maxSelections: 1,
        options: [option("regular", "Regular", 0, true), option("mini", "Mini (2 pieces)", 0)],
      },
      extras(option("warmed", "Warmed", 0), option("jam", "Strawberry jam", 50), option("butter", "Extra butter", 40)),
    ],
    active: true,
  },
};

const REWARDS: Record<string, MessageInitShape<typeof RewardSchema>> = {
  "two-off": {
    displayName: "$2.00 off your order",
    description: "Two dollars off the items.",
    pointCost: 150n,
    benefit: { case: "amountOff", value: usd(200) },
    active: true,
  },
  "ten-percent": {
    displayName: "10% off (up to $3.00)",
    description: "Ten percent off the items, at most three dollars.",
    pointCost: 250n,
    benefit: { case: "percentOffBps", value: 1000 },
    maxDiscount: usd(300),
    active: true,
  },
};

const LOCATIONS: Record<string, string> = { downtown: "Downtown", harbor: "Harbor Kiosk" };

/** Seeds locations, menu, rewards and the demo members' points. Waits out a starting platform. */
export async function seed(
  platform: Platform,
  tenant: string,
  staffToken: () => string,
  log: (line: string) => void,
): Promise<void> {
  const out = (): Outgoing => ({ requestId: `bff-seed-${Date.now()}`, timeoutMs: 10_000 });
  const keyed = (key: string) => options(out(), { ...bearer(staffToken()), "idempotency-key": `${tenant}-${key}` });
  const started = Date.now();
  for (const [key, displayName] of Object.entries(LOCATIONS)) {
    for (;;) {
      try {
        await platform.menu.createLocation({ location: location(displayName) }, keyed(`location-${key}`));
        break;
      } catch (err) {
        const error = ConnectError.from(err);
        if (error.code !== Code.Unavailable || Date.now() - started > 60_000) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }
  const items: MenuItem[] = [];
  for (const [key, item] of Object.entries(ITEMS)) {
    items.push((await platform.menu.createMenuItem({ item }, keyed(`item-${key}`))).item!);
  }
  for (const [key, reward] of Object.entries(REWARDS)) {
    await platform.rewards.createReward({ reward }, keyed(`reward-${key}`));
  }
  for (const customerId of Object.keys(DEMO_CUSTOMERS)) {
    await enrol(platform, tenant, staffToken(), customerId, out());
  }
  log(`bff: seeded tenant ${tenant}: ${Object.keys(LOCATIONS).length} locations, ${items.length} items, ${Object.keys(REWARDS).length} rewards`);
}

/**
 * Enrols `customerId` as a registered member (EnrollMember is idempotent on the customer id) and
 * tops their points up when they run low, so the demo rewards stay affordable. The top-up's key
 * names the balance it was decided on (and a 10-minute window), so concurrent sign-ins make one
 * top-up, not two.
 */
export async function enrol(
  platform: Platform,
  tenant: string,
  staffToken: string,
  customerId: string,
  out: Outgoing,
): Promise<{ memberId: string; availablePoints: bigint }> {
  const auth = bearer(staffToken);
  const { member } = await platform.members.enrollMember(
    { customerId, displayName: DEMO_CUSTOMERS[customerId] ?? customerId, registered: true },
    options(out, auth),
  );
  const memberId = member!.memberId;
  const { balance } = await platform.members.getBalance({ memberId }, options(out, auth));
  let available = balance?.availablePoints ?? 0n;
  if (available < TOP_UP_BELOW) {
    const window = Math.floor(Date.now() / 600_000);
    const key = `${tenant}-points-${customerId}-${balance?.lifetimePoints ?? 0n}-${available}-${window}`;
    await platform.points.adjustPoints(
      { memberId, points: TOP_UP_POINTS, reason: "web demo welcome points" },
      options(out, { ...auth, "idempotency-key": key }),
    );
    available += TOP_UP_POINTS;
  }
  return { memberId, availablePoints: available };
}

function location(displayName: string) {
  const days = [
    DayOfWeek.MONDAY,
    DayOfWeek.TUESDAY,
    DayOfWeek.WEDNESDAY,
    DayOfWeek.THURSDAY,
    DayOfWeek.FRIDAY,
    DayOfWeek.SATURDAY,
    DayOfWeek.SUNDAY,
  ];
  return {
    displayName,
    // Open around the clock in UTC: a location without opening hours is always closed.
    timeZone: "UTC",
    currencyCode: "USD",
    openingHours: days.map((day) => ({ day, openMinute: 0, closeMinute: 24 * 60 })),
    fulfillmentModes: [FulfillmentMode.PICKUP],
    slotCapacity: { slotMinutes: 15, maxOrdersPerSlot: 50, prepMinutes: 5 },
    taxRates: [{ taxCategory: "prepared_food", ratePpm: 88_750 }],
  };
}

export type { Reward };

//! Locations and the menu: the only source of prices. Items carry modifier groups with
//! selection bounds and priced options; each location may override an item's price or mark it
//! unavailable ("86'd"). SKUs are unique per tenant (a claim record per SKU, written in the same
//! commit as the item).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use commerce_api::commerce::checkout::v1::{
    CreateLocationResponse, CreateMenuItemResponse, FulfillmentMode, ItemLocationSettings,
    Location, MenuItem, ModifierGroup, SelectedModifier,
};
use commerce_api::commerce::common::v1::Money;
use platform::clock::Clocks;
use platform::interceptors::IdempotencyContext;
use platform::page_token;
use platform::units::timestamp_of_ms;
use store::{AggregateKey, Commit, IndexEntry, Pages, Retry, Store, StoreError, retry_on_conflict};

use crate::error::CheckoutError;
use crate::{hours, ids, limits};

const LOCATION: &str = "checkout_location";
const ITEM: &str = "checkout_item";
const SKU: &str = "checkout_sku";

/// How a menu edit retries a lost race: edits are rare and few race, so 16 attempts with
/// jittered pauses from 200 µs growing to 10 ms, then `ABORTED` (contended).
const EDIT_RETRY: Retry = Retry {
    attempts: 16,
    first_pause: Duration::from_micros(200),
    max_pause: Duration::from_millis(10),
};

const LOCATION_FIELDS: [&str; 10] = [
    "display_name",
    "time_zone",
    "address",
    "currency_code",
    "opening_hours",
    "fulfillment_modes",
    "slot_capacity",
    "tax_rates",
    "capture_mode",
    "tip_headroom_percent",
];

const ITEM_FIELDS: [&str; 9] = [
    "sku",
    "display_name",
    "description",
    "category",
    "tax_category",
    "base_price",
    "modifier_groups",
    "location_settings",
    "active",
];

fn all() -> IndexEntry {
    IndexEntry {
        name: "all".into(),
        value: "1".into(),
    }
}

fn in_category(category: &str) -> IndexEntry {
    IndexEntry {
        name: "category".into(),
        value: category.into(),
    }
}

/// The write of a SKU's claim: the item id holding it as UTF-8 bytes, or nothing once a SKU
/// change released it (`item_id` empty). Not a protobuf message: the format predates them.
fn sku_claim(key: AggregateKey, version: u64, item_id: &str) -> Commit {
    Commit {
        data: Bytes::from(item_id.to_owned()),
        ..Commit::record(key, version, &())
    }
}

/// Sets the fields of `location` that `set` names to `update`'s.
fn merge_location(location: &mut Location, update: &Location, set: impl Fn(&str) -> bool) {
    if set("display_name") {
        location.display_name.clone_from(&update.display_name);
    }
    if set("time_zone") {
        location.time_zone.clone_from(&update.time_zone);
    }
    if set("address") {
        location.address.clone_from(&update.address);
    }
    if set("currency_code") {
        location.currency_code.clone_from(&update.currency_code);
    }
    if set("opening_hours") {
        location.opening_hours.clone_from(&update.opening_hours);
    }
    if set("fulfillment_modes") {
        location
            .fulfillment_modes
            .clone_from(&update.fulfillment_modes);
    }
    if set("slot_capacity") {
        location.slot_capacity = update.slot_capacity;
    }
    if set("tax_rates") {
        location.tax_rates.clone_from(&update.tax_rates);
    }
    if set("capture_mode") {
        location.capture_mode = update.capture_mode;
    }
    if set("tip_headroom_percent") {
        location.tip_headroom_percent = update.tip_headroom_percent;
    }
}

/// Checks `mask` against the mutable `fields`; true when it names every field (`*`).
fn check_mask(mask: &[String], fields: &[&str]) -> Result<bool, CheckoutError> {
    if mask.is_empty() {
        return Err(CheckoutError::invalid("update_mask", "names no field"));
    }
    if let Some(unknown) = mask
        .iter()
        .find(|path| *path != "*" && !fields.contains(&path.as_str()))
    {
        return Err(CheckoutError::invalid(
            "update_mask",
            format!("unknown or immutable field {unknown:?}"),
        ));
    }
    Ok(mask.iter().any(|path| path == "*"))
}

/// A location's menu item as sold there: the price that applies and whether it is offered.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The item.
    pub item: MenuItem,
    /// Price of one item without modifiers at the location.
    pub price: Money,
    /// Offered now: active, not 86'd there, and priced in the location's currency.
    pub available: bool,
}

/// The catalog over the store.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn Store>,
    clocks: Clocks,
}

impl Catalog {
    /// A catalog in `store`, timestamped by the tenant clock.
    pub fn new(store: Arc<dyn Store>, clocks: Clocks) -> Self {
        Catalog { store, clocks }
    }

    // ---- locations -------------------------------------------------------------------------

    /// Creates a location; its id derives from `id_key` (the idempotency key), so a retried
    /// create returns the location it made.
    pub async fn create_location(
        &self,
        tenant: &str,
        location: &Location,
        id_key: &str,
    ) -> Result<Location, CheckoutError> {
        self.create_location_recording(tenant, location, id_key, None)
            .await
    }

    /// [`Catalog::create_location`], with the `CreateLocationResponse` carrying the new location
    /// recorded under `idempotency` in the commit that creates it. A call that finds the
    /// location made records nothing here: the idempotency layer records its answer.
    pub async fn create_location_recording(
        &self,
        tenant: &str,
        location: &Location,
        id_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Location, CheckoutError> {
        check_location(location)?;
        let id = ids::from_key("loc", id_key, 24);
        let key = AggregateKey::new(tenant, LOCATION, &id);
        if let Some(stored) = self.store.load(&key).await? {
            return Ok(stored.decode(&format!("location {id}"))?);
        }
        let now = timestamp_of_ms(self.clocks.now_ms(tenant).await?);
        let location = Location {
            location_id: id,
            create_time: Some(now),
            update_time: Some(now),
            version: 1,
            ..location.clone()
        };
        let created = Commit::record(key.clone(), 0, &location)
            .indexed(vec![all()])
            .answering(idempotency.map(|context| {
                context.record(&CreateLocationResponse {
                    location: Some(location.clone()),
                })
            }));
        match self.store.commit(created).await {
            Ok(_) => Ok(location),
            Err(StoreError::Conflict { .. }) => self.location(tenant, &location.location_id).await,
            Err(error) => Err(error.into()),
        }
    }

    /// Changes the fields named in `mask` (`*`: every mutable one).
    pub async fn update_location(
        &self,
        tenant: &str,
        update: &Location,
        mask: &[String],
        expected_version: i64,
    ) -> Result<Location, CheckoutError> {
        let every = check_mask(mask, &LOCATION_FIELDS)?;
        let set = |field: &str| every || mask.iter().any(|path| path == field);
        let key = AggregateKey::new(tenant, LOCATION, &update.location_id);
        let (key, set) = (&key, &set);
        retry_on_conflict(EDIT_RETRY, || async move {
            let (version, mut location) = self.load_location(tenant, &update.location_id).await?;
            if expected_version != 0 && expected_version != location.version {
                return Err(CheckoutError::VersionMismatch {
                    resource: "location",
                    expected: expected_version,
                    actual: location.version,
                });
            }
            merge_location(&mut location, update, set);
            check_location(&location)?;
            location.version += 1;
            location.update_time = Some(timestamp_of_ms(self.clocks.now_ms(tenant).await?));
            let change = Commit::record(key.clone(), version, &location).indexed(vec![all()]);
            self.store.commit(change).await?;
            Ok(location)
        })
        .await
    }

    async fn load_location(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(u64, Location), CheckoutError> {
        let stored = self
            .store
            .load(&AggregateKey::new(tenant, LOCATION, id))
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "location",
                id: id.to_owned(),
            })?;
        Ok((stored.version, stored.decode(&format!("location {id}"))?))
    }

    /// A location by id.
    pub async fn location(&self, tenant: &str, id: &str) -> Result<Location, CheckoutError> {
        Ok(self.load_location(tenant, id).await?.1)
    }

    /// Locations by id, paged.
    pub async fn locations(
        &self,
        tenant: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<Location>, String), CheckoutError> {
        let start = page_token::decode("locations", token)?;
        let mut pages =
            Pages::new(self.store.as_ref(), tenant, LOCATION, all(), page_size + 1).after(start);
        let page = pages.next().await?.unwrap_or_default();
        let more = page.len() > page_size;
        let mut locations = Vec::new();
        for (id, stored) in page.iter().take(page_size) {
            locations.push(stored.decode::<Location>(&format!("location {id}"))?);
        }
        let next = match (more, locations.last()) {
            (true, Some(last)) => page_token::encode("locations", &last.location_id),
            _ => String::new(),
        };
        Ok((locations, next))
    }

    // ---- menu items ------------------------------------------------------------------------

    /// Creates a menu item; its id derives from `id_key`. The SKU must be free in the tenant.
    pub async fn create_item(
        &self,
        tenant: &str,
        item: &MenuItem,
        id_key: &str,
    ) -> Result<MenuItem, CheckoutError> {
        self.create_item_recording(tenant, item, id_key, None).await
    }

    /// [`Catalog::create_item`], with the `CreateMenuItemResponse` carrying the new item
    /// recorded under `idempotency` in the commit that creates it. A call that finds the item
    /// made, or fails, records nothing here: the idempotency layer records its answer.
    pub async fn create_item_recording(
        &self,
        tenant: &str,
        item: &MenuItem,
        id_key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<MenuItem, CheckoutError> {
        let id = ids::from_key("item", id_key, 24);
        let key = AggregateKey::new(tenant, ITEM, &id);
        if let Some(stored) = self.store.load(&key).await? {
            return Ok(stored.decode(&format!("menu item {id}"))?);
        }
        self.check_item(tenant, item).await?;
        let now = timestamp_of_ms(self.clocks.now_ms(tenant).await?);
        let item = MenuItem {
            item_id: id,
            create_time: Some(now),
            update_time: Some(now),
            version: 1,
            ..item.clone()
        };
        let claim = self.claim_sku(tenant, &item.sku, &item.item_id).await?;
        let created = Commit::record(key, 0, &item)
            .indexed(item_index(&item))
            .answering(idempotency.map(|context| {
                context.record(&CreateMenuItemResponse {
                    item: Some(item.clone()),
                })
            }));
        match self.store.commit_all(vec![created, claim]).await {
            Ok(_) => Ok(item),
            Err(StoreError::Conflict { .. }) => match self.item(tenant, &item.item_id).await {
                Ok(existing) => Ok(existing),
                Err(CheckoutError::NotFound { .. }) => Err(CheckoutError::AlreadyExists {
                    resource: "sku",
                    id: item.sku.clone(),
                }),
                Err(error) => Err(error),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// The commit claiming `sku` for `item_id`; fails when another item holds it.
    async fn claim_sku(
        &self,
        tenant: &str,
        sku: &str,
        item_id: &str,
    ) -> Result<Commit, CheckoutError> {
        let key = AggregateKey::new(tenant, SKU, sku);
        let version = match self.store.load(&key).await? {
            // An empty claim was released by a SKU change.
            Some(claim) if !claim.data.is_empty() && claim.data != item_id.as_bytes() => {
                return Err(CheckoutError::AlreadyExists {
                    resource: "sku",
                    id: sku.to_owned(),
                });
            }
            Some(claim) => claim.version,
            None => 0,
        };
        Ok(sku_claim(key, version, item_id))
    }

    /// Changes the fields named in `mask` (`*`: every mutable one).
    pub async fn update_item(
        &self,
        tenant: &str,
        update: &MenuItem,
        mask: &[String],
        expected_version: i64,
    ) -> Result<MenuItem, CheckoutError> {
        let every = check_mask(mask, &ITEM_FIELDS)?;
        let set = |field: &str| every || mask.iter().any(|path| path == field);
        self.change_item(tenant, &update.item_id, expected_version, |item| {
            if set("sku") {
                item.sku.clone_from(&update.sku);
            }
            if set("display_name") {
                item.display_name.clone_from(&update.display_name);
            }
            if set("description") {
                item.description.clone_from(&update.description);
            }
            if set("category") {
                item.category.clone_from(&update.category);
            }
            if set("tax_category") {
                item.tax_category.clone_from(&update.tax_category);
            }
            if set("base_price") {
                item.base_price.clone_from(&update.base_price);
            }
            if set("modifier_groups") {
                item.modifier_groups.clone_from(&update.modifier_groups);
            }
            if set("location_settings") {
                item.location_settings.clone_from(&update.location_settings);
            }
            if set("active") {
                item.active = update.active;
            }
        })
        .await
    }

    /// Marks an item sold out (or offered again) at one location.
    pub async fn set_availability(
        &self,
        tenant: &str,
        item_id: &str,
        location_id: &str,
        available: bool,
    ) -> Result<MenuItem, CheckoutError> {
        self.location(tenant, location_id).await?;
        self.change_item(tenant, item_id, 0, |item| {
            match item
                .location_settings
                .iter_mut()
                .find(|settings| settings.location_id == location_id)
            {
                Some(settings) => settings.unavailable = !available,
                None => item.location_settings.push(ItemLocationSettings {
                    location_id: location_id.to_owned(),
                    price: None,
                    unavailable: !available,
                }),
            }
        })
        .await
    }

    /// Read, change with `edit`, check, and commit an item (moving its SKU claim if the SKU
    /// changed), retrying lost races.
    async fn change_item(
        &self,
        tenant: &str,
        item_id: &str,
        expected_version: i64,
        edit: impl Fn(&mut MenuItem),
    ) -> Result<MenuItem, CheckoutError> {
        let key = AggregateKey::new(tenant, ITEM, item_id);
        let (key, edit) = (&key, &edit);
        retry_on_conflict(EDIT_RETRY, || {
            self.try_change_item(tenant, key, expected_version, edit)
        })
        .await
    }

    async fn try_change_item(
        &self,
        tenant: &str,
        key: &AggregateKey,
        expected_version: i64,
        edit: &impl Fn(&mut MenuItem),
    ) -> Result<MenuItem, CheckoutError> {
        let stored = self
            .store
            .load(key)
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "menu item",
                id: key.id.clone(),
            })?;
        let mut item: MenuItem = stored.decode(&format!("menu item {}", key.id))?;
        if expected_version != 0 && expected_version != item.version {
            return Err(CheckoutError::VersionMismatch {
                resource: "menu item",
                expected: expected_version,
                actual: item.version,
            });
        }
        let old_sku = item.sku.clone();
        edit(&mut item);
        self.check_item(tenant, &item).await?;
        item.version += 1;
        item.update_time = Some(timestamp_of_ms(self.clocks.now_ms(tenant).await?));
        let mut commits =
            vec![Commit::record(key.clone(), stored.version, &item).indexed(item_index(&item))];
        if item.sku != old_sku {
            commits.push(self.claim_sku(tenant, &item.sku, &item.item_id).await?);
            let old = AggregateKey::new(tenant, SKU, &old_sku);
            let old_version = self
                .store
                .load(&old)
                .await?
                .map_or(0, |claim| claim.version);
            commits.push(sku_claim(old, old_version, ""));
        }
        self.store.commit_all(commits).await?;
        Ok(item)
    }

    /// A menu item by id.
    pub async fn item(&self, tenant: &str, id: &str) -> Result<MenuItem, CheckoutError> {
        let stored = self
            .store
            .load(&AggregateKey::new(tenant, ITEM, id))
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "menu item",
                id: id.to_owned(),
            })?;
        Ok(stored.decode(&format!("menu item {id}"))?)
    }

    /// Menu items by id, paged; with `location_id` only those offered there, priced for it
    /// (`base_price` is the price that applies there); with `category` only that category.
    pub async fn items(
        &self,
        tenant: &str,
        location_id: Option<&str>,
        category: Option<&str>,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<MenuItem>, String), CheckoutError> {
        let scope = format!(
            "items:{}:{}",
            location_id.unwrap_or(""),
            category.unwrap_or("")
        );
        let start = page_token::decode(&scope, token)?;
        let location = match location_id {
            Some(id) => Some(self.location(tenant, id).await?),
            None => None,
        };
        let index = category.map_or_else(all, in_category);
        let mut pages = Pages::new(self.store.as_ref(), tenant, ITEM, index, 256).after(start);
        let mut items = Vec::new();
        while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let mut item: MenuItem = stored.decode(&format!("menu item {id}"))?;
                if let Some(location) = &location {
                    let offer = offer(&item, location);
                    if !offer.available {
                        continue;
                    }
                    item.base_price = Some(offer.price);
                }
                items.push(item);
                if items.len() == page_size {
                    return Ok((items, page_token::encode(&scope, &id)));
                }
            }
        }
        Ok((items, String::new()))
    }

    /// The item as offered at `location_id`: its price there and whether it is sold there.
    pub async fn offer(
        &self,
        tenant: &str,
        item_id: &str,
        location_id: &str,
    ) -> Result<Offer, CheckoutError> {
        let item = self.item(tenant, item_id).await?;
        let location = self.location(tenant, location_id).await?;
        Ok(offer(&item, &location))
    }

    /// Rules of an item the contract's field constraints cannot state.
    async fn check_item(&self, tenant: &str, item: &MenuItem) -> Result<(), CheckoutError> {
        let price = item
            .base_price
            .as_ref()
            .ok_or_else(|| CheckoutError::invalid("item.base_price", "is required"))?;
        check_money("item.base_price", price)?;
        for (index, group) in item.modifier_groups.iter().enumerate() {
            check_group(
                &format!("item.modifier_groups[{index}]"),
                group,
                &price.currency_code,
            )?;
        }
        let mut ids: Vec<&str> = item
            .modifier_groups
            .iter()
            .map(|g| g.group_id.as_str())
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(CheckoutError::invalid(
                "item.modifier_groups",
                "group ids must be unique",
            ));
        }
        let mut seen = Vec::new();
        for (index, settings) in item.location_settings.iter().enumerate() {
            let field = format!("item.location_settings[{index}]");
            if seen.contains(&settings.location_id.as_str()) {
                return Err(CheckoutError::invalid(field, "names its location twice"));
            }
            seen.push(settings.location_id.as_str());
            let location = match self.location(tenant, &settings.location_id).await {
                Ok(location) => location,
                Err(CheckoutError::NotFound { .. }) => {
                    return Err(CheckoutError::invalid(
                        format!("{field}.location_id"),
                        format!("no location {}", settings.location_id),
                    ));
                }
                Err(error) => return Err(error),
            };
            if let Some(price) = &settings.price {
                check_money(&format!("{field}.price"), price)?;
                if price.currency_code != location.currency_code {
                    return Err(CheckoutError::invalid(
                        format!("{field}.price.currency_code"),
                        format!("the location sells in {}", location.currency_code),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn item_index(item: &MenuItem) -> Vec<IndexEntry> {
    let mut index = vec![all()];
    if !item.category.is_empty() {
        index.push(in_category(&item.category));
    }
    index
}

/// The item as offered at `location`.
pub fn offer(item: &MenuItem, location: &Location) -> Offer {
    let settings = item
        .location_settings
        .iter()
        .find(|settings| settings.location_id == location.location_id);
    let price = settings
        .and_then(|settings| settings.price.clone())
        .or_else(|| item.base_price.clone())
        .unwrap_or_default();
    let available = item.active
        && !settings.is_some_and(|settings| settings.unavailable)
        && price.currency_code == location.currency_code;
    Offer {
        item: item.clone(),
        price,
        available,
    }
}

fn check_money(field: &str, money: &Money) -> Result<(), CheckoutError> {
    limits::amount(field, money)?;
    if money.currency_code.len() != 3
        || !money.currency_code.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(CheckoutError::invalid(
            format!("{field}.currency_code"),
            "must be an ISO-4217 code like USD",
        ));
    }
    Ok(())
}

/// A modifier group's bounds must be satisfiable and its options priced in the item's currency.
fn check_group(field: &str, group: &ModifierGroup, currency: &str) -> Result<(), CheckoutError> {
    if group.max_selections > 0 && group.min_selections > group.max_selections {
        return Err(CheckoutError::invalid(
            format!("{field}.min_selections"),
            "exceeds max_selections",
        ));
    }
    let options = i32::try_from(group.options.len()).unwrap_or(i32::MAX);
    if !group.allow_repeats && group.min_selections > options {
        return Err(CheckoutError::invalid(
            format!("{field}.min_selections"),
            "needs more distinct options than the group has",
        ));
    }
    let defaults = group
        .options
        .iter()
        .filter(|option| option.default_selected)
        .count();
    if group.max_selections > 0 && defaults > group.max_selections as usize {
        return Err(CheckoutError::invalid(
            format!("{field}.options"),
            "more options are selected by default than max_selections allows",
        ));
    }
    let mut ids: Vec<&str> = group
        .options
        .iter()
        .map(|option| option.option_id.as_str())
        .collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(CheckoutError::invalid(
            format!("{field}.options"),
            "option ids must be unique",
        ));
    }
    for (index, option) in group.options.iter().enumerate() {
        if let Some(price) = &option.price {
            let field = format!("{field}.options[{index}].price");
            check_money(&field, price)?;
            if price.currency_code != currency {
                return Err(CheckoutError::invalid(
                    format!("{field}.currency_code"),
                    format!("the item is priced in {currency}"),
                ));
            }
        }
    }
    Ok(())
}

/// Rules of a location the contract's field constraints cannot state.
fn check_location(location: &Location) -> Result<(), CheckoutError> {
    limits::location(location)?;
    if hours::zone(&location.time_zone).is_none() {
        return Err(CheckoutError::invalid(
            "location.time_zone",
            format!("{:?} is not an IANA time zone", location.time_zone),
        ));
    }
    let mut modes = location.fulfillment_modes.clone();
    modes.sort_unstable();
    if modes.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(CheckoutError::invalid(
            "location.fulfillment_modes",
            "lists a mode twice",
        ));
    }
    if modes.contains(&(FulfillmentMode::Unspecified as i32)) {
        return Err(CheckoutError::invalid(
            "location.fulfillment_modes",
            "lists no mode",
        ));
    }
    let mut categories: Vec<&str> = location
        .tax_rates
        .iter()
        .map(|rate| rate.tax_category.as_str())
        .collect();
    categories.sort_unstable();
    if categories.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(CheckoutError::invalid(
            "location.tax_rates",
            "lists a tax category twice",
        ));
    }
    Ok(())
}

/// A line's modifier choices, checked against the item's groups: the options as they will be
/// made (groups not mentioned get their default options) and their price for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The resolved choices, each with its quantity (≥ 1).
    pub modifiers: Vec<SelectedModifier>,
    /// Price of the chosen options for one item, minor units.
    pub unit_price_minor: i64,
}

/// Checks `chosen` against `item`'s modifier groups: known groups and options, options still
/// available, repeats only where allowed, and every group's min/max counting quantities.
pub fn select(item: &MenuItem, chosen: &[SelectedModifier]) -> Result<Selection, CheckoutError> {
    check_choices(item, chosen)?;
    let mut modifiers = Vec::new();
    let mut unit_price_minor: i64 = 0;
    for group in &item.modifier_groups {
        let picks = group_picks(group, chosen)?;
        for pick in &picks {
            let price = group
                .options
                .iter()
                .find(|option| option.option_id == pick.option_id)
                .and_then(|option| option.price.as_ref())
                .map_or(0, |price| price.amount_minor);
            unit_price_minor = price
                .checked_mul(i64::from(pick.quantity))
                .and_then(|total| unit_price_minor.checked_add(total))
                .ok_or_else(|| CheckoutError::invalid("modifiers", "prices overflow"))?;
        }
        modifiers.extend(picks);
    }
    Ok(Selection {
        modifiers,
        unit_price_minor,
    })
}

fn modifier_invalid(message: String) -> CheckoutError {
    CheckoutError::ModifierInvalid { message }
}

/// Each choice names a group and option of the item, an option still available, repeated only
/// where the group allows, and chosen once (more of it is its quantity).
fn check_choices(item: &MenuItem, chosen: &[SelectedModifier]) -> Result<(), CheckoutError> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for choice in chosen {
        let group = item
            .modifier_groups
            .iter()
            .find(|group| group.group_id == choice.group_id)
            .ok_or_else(|| {
                modifier_invalid(format!(
                    "{} has no modifier group {}",
                    item.item_id, choice.group_id
                ))
            })?;
        let option = group
            .options
            .iter()
            .find(|option| option.option_id == choice.option_id)
            .ok_or_else(|| {
                modifier_invalid(format!(
                    "group {} has no option {}",
                    group.group_id, choice.option_id
                ))
            })?;
        if !option.available {
            return Err(CheckoutError::Precondition {
                reason: commerce_api::commerce::common::v1::ErrorReason::ItemUnavailable,
                message: format!(
                    "option {} of {} is sold out",
                    option.option_id, group.group_id
                ),
            });
        }
        if choice.quantity > 1 && !group.allow_repeats {
            return Err(modifier_invalid(format!(
                "group {} does not allow an option more than once",
                group.group_id
            )));
        }
        if seen.contains(&(choice.group_id.as_str(), choice.option_id.as_str())) {
            return Err(modifier_invalid(format!(
                "option {} of {} is chosen twice; use quantity",
                choice.option_id, group.group_id
            )));
        }
        seen.push((choice.group_id.as_str(), choice.option_id.as_str()));
    }
    Ok(())
}

/// What will be made for `group`: the choices naming it, or its available default options when
/// none does — within the group's min and max selections (counting quantities).
fn group_picks(
    group: &ModifierGroup,
    chosen: &[SelectedModifier],
) -> Result<Vec<SelectedModifier>, CheckoutError> {
    let mentioned: Vec<&SelectedModifier> = chosen
        .iter()
        .filter(|choice| choice.group_id == group.group_id)
        .collect();
    let picks: Vec<SelectedModifier> = if mentioned.is_empty() {
        group
            .options
            .iter()
            .filter(|option| option.default_selected && option.available)
            .map(|option| SelectedModifier {
                group_id: group.group_id.clone(),
                option_id: option.option_id.clone(),
                quantity: 1,
            })
            .collect()
    } else {
        mentioned
            .into_iter()
            .map(|choice| SelectedModifier {
                quantity: choice.quantity.max(1),
                ..choice.clone()
            })
            .collect()
    };
    let count: i32 = picks.iter().map(|pick| pick.quantity).sum();
    if count < group.min_selections {
        return Err(modifier_invalid(format!(
            "group {} needs at least {} selection(s), got {count}",
            group.group_id, group.min_selections
        )));
    }
    if group.max_selections > 0 && count > group.max_selections {
        return Err(modifier_invalid(format!(
            "group {} allows at most {} selection(s), got {count}",
            group.group_id, group.max_selections
        )));
    }
    Ok(picks)
}

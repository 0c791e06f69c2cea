//! `marketplace seed`: a realistic marketplace, written through the real
//! command path.
//!
//! Sellers, buyers and an admin are registered with the registration flow
//! (email claims included); buyers deposit funds; sellers create listings
//! across ten categories (PHYSICAL with small stocks, DIGITAL with a content
//! hash), publish most, keep a few as drafts and delist a few; buyers place
//! orders exactly as the `placeOrder` mutation does. The checkout saga and
//! the payout process run in this process while it seeds, so orders are
//! decided and settled as they would be in `serve`. Confirmed orders are
//! then cancelled, shipped or delivered, delivered lines are reviewed, and
//! the admin moderates the reviews.
//!
//! Everything random comes from one generator seeded by `--seed`, drawn in a
//! fixed order, so the same flags plan the same marketplace. What the saga
//! decides can still differ between runs where orders compete for the same
//! stock or the same wallet: that depends on the order in which concurrent
//! placements reach the log.
//!
//! Seeding the same database twice is refused before anything is written:
//! the seeded emails are fixed, and half of a second generation would be
//! worse than none.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use marketplace_commands::flows::place_order::price_lines;
use marketplace_commands::flows::register::{register, RegisterError, Registration};
use marketplace_commands::process;
use marketplace_commands::{CommandContext, CommandHandler};
use marketplace_consumers::{LocalStatus, Registry, Runner, RunnerState};
use marketplace_domain::account::{Account, AccountCommand, DepositFunds, RegistrationChannel};
use marketplace_domain::email_claim::{claim_id, EmailClaim};
use marketplace_domain::listing::{
    Change, CreateListing, Listing, ListingCommand, ListingSpec, PublishListing, SellerChange,
};
use marketplace_domain::order::{Fulfil, Order, OrderCommand, OrderStatus, PlaceOrder, Step};
use marketplace_domain::review::{
    Decision, ModerateReview, OrderFacts, Review, ReviewCommand, ReviewStatus, SubmitReview,
};
use marketplace_domain::values::{
    AccountId, Actor, Category, ContentHash, Description, DisplayName, Email, FeeRate, ListingId,
    OrderId, PasswordHash, Quantity, Rating, Reason, ReviewComment, ReviewId, Role, Tags, Title,
    TrackingCode,
};
use marketplace_store::{EventStore, Position};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::bench::{bar, eur};
use marketplace_api::auth::{hash_password, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use marketplace_api::database::{connect, migrate};

/// The admin every seeded marketplace has.
pub const ADMIN_EMAIL: &str = "admin@seed.example";
/// The password of every seeded account unless `--password` says otherwise.
pub const DEFAULT_PASSWORD: &str = "marketplace-demo";
/// The generator seed unless `--seed` says otherwise.
pub const DEFAULT_SEED: u64 = 42;

/// How often a wait for the saga's verdict looks at the order again.
const POLL: Duration = Duration::from_millis(10);
/// How long a wait for the process managers may see no progress at all.
const STALL: Duration = Duration::from_secs(120);

/// The email of seller number `n` (1-based).
pub fn seller_email(n: usize) -> String {
    format!("seller-{n}@seed.example")
}

/// The email of buyer number `n` (1-based).
pub fn buyer_email(n: usize) -> String {
    format!("buyer-{n}@seed.example")
}

/// Options of `marketplace seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Seller accounts to open.
    #[arg(long, default_value_t = 20)]
    pub sellers: usize,
    /// Listings each seller creates (most published, a few left as drafts,
    /// a few delisted).
    #[arg(long, default_value_t = 10)]
    pub listings_per_seller: usize,
    /// Buyer accounts to open and fund (about one in twenty deliberately
    /// poor, so some orders are rejected for insufficient funds).
    #[arg(long, default_value_t = 100)]
    pub buyers: usize,
    /// Orders to place (about 8 events each, the saga's and the payout's
    /// included). For a bigger log raise sellers and buyers with it, e.g.
    /// --sellers 200 --buyers 1000 --orders 10000 (about 80,000 events).
    #[arg(long, default_value_t = 300)]
    pub orders: usize,
    /// Seed of the random generator: the same flags plan the same
    /// marketplace.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Password of every seeded account, 8 to 128 characters.
    #[arg(long, default_value = DEFAULT_PASSWORD)]
    pub password: String,
    /// Commands in flight at once (concurrent command streams).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Where the DIGITAL listings' files are written (a local asset store,
    /// as `serve` reads by default: `<data-dir>/assets`). Unset: only the
    /// listings are seeded, without their files.
    #[arg(long)]
    pub assets_dir: Option<std::path::PathBuf>,
}

impl Default for SeedArgs {
    fn default() -> Self {
        Self {
            sellers: 20,
            listings_per_seller: 10,
            buyers: 100,
            orders: 300,
            seed: DEFAULT_SEED,
            password: DEFAULT_PASSWORD.to_owned(),
            concurrency: 8,
            assets_dir: None,
        }
    }
}

/// Why seeding was refused: the database already holds a seeded marketplace.
#[derive(Debug, thiserror::Error)]
#[error(
    "this database is already seeded ({email} exists); nothing was written. \
     Seed a fresh database: pass a new --data-dir (embedded PostgreSQL) or point \
     DATABASE_URL at an empty database"
)]
pub struct AlreadySeeded {
    /// The seeded email found.
    pub email: String,
}

/// What a seeding run produced.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The generator seed used.
    pub seed: u64,
    /// Sellers registered.
    pub sellers: usize,
    /// Buyers registered.
    pub buyers: usize,
    /// Of which deliberately poor.
    pub poor_buyers: usize,
    /// Listings by final status: published, draft, delisted.
    pub listings: [(&'static str, usize); 3],
    /// PHYSICAL and DIGITAL listings.
    pub physical: usize,
    /// DIGITAL listings.
    pub digital: usize,
    /// Orders by final status.
    pub orders: Vec<(OrderStatus, usize)>,
    /// REJECTED orders by the saga's reason.
    pub rejections: BTreeMap<String, usize>,
    /// Reviews by final status.
    pub reviews: Vec<(ReviewStatus, usize)>,
    /// Events this run appended.
    pub events_appended: u64,
    /// Events in the log now.
    pub events_total: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Whether every account has the default password.
    pub default_password: bool,
}

impl SeedReport {
    /// Orders that ended in `status`.
    pub fn orders_in(&self, status: OrderStatus) -> usize {
        self.orders
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// Reviews that ended in `status`.
    pub fn reviews_in(&self, status: ReviewStatus) -> usize {
        self.reviews
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

fn order_status_name(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Absent => "absent",
        OrderStatus::Pending => "pending",
        OrderStatus::Confirmed => "confirmed",
        OrderStatus::Shipped => "shipped",
        OrderStatus::Delivered => "delivered",
        OrderStatus::Cancelled => "cancelled",
        OrderStatus::Rejected => "rejected",
    }
}

fn review_status_name(s: ReviewStatus) -> &'static str {
    match s {
        ReviewStatus::Absent => "absent",
        ReviewStatus::Pending => "pending",
        ReviewStatus::Approved => "approved",
        ReviewStatus::Rejected => "rejected",
    }
}

fn breakdown<'a>(parts: impl IntoIterator<Item = (&'a str, usize)>) -> String {
    parts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let listings: usize = self.listings.iter().map(|(_, n)| n).sum();
        let orders: usize = self.orders.iter().map(|(_, n)| n).sum();
        let reviews: usize = self.reviews.iter().map(|(_, n)| n).sum();
        writeln!(f, "seeded in {secs:.1}s (seed {}):", self.seed)?;
        writeln!(
            f,
            "  accounts {:>7}: {} sellers, {} buyers ({} poor), 1 admin",
            self.sellers + self.buyers + 1,
            self.sellers,
            self.buyers,
            self.poor_buyers
        )?;
        writeln!(
            f,
            "  listings {listings:>7}: {} ({} physical, {} digital)",
            breakdown(self.listings),
            self.physical,
            self.digital
        )?;
        writeln!(
            f,
            "  orders   {orders:>7}: {}",
            breakdown(self.orders.iter().map(|(s, n)| (order_status_name(*s), *n)))
        )?;
        if !self.rejections.is_empty() {
            writeln!(
                f,
                "           rejected: {}",
                breakdown(self.rejections.iter().map(|(r, n)| (r.as_str(), *n)))
            )?;
        }
        writeln!(
            f,
            "  reviews  {reviews:>7}: {}",
            breakdown(
                self.reviews
                    .iter()
                    .map(|(s, n)| (review_status_name(*s), *n))
            )
        )?;
        writeln!(
            f,
            "  events   {:>7}: appended by this run ({} in the log), {:.0} events/s",
            self.events_appended,
            self.events_total,
            self.events_appended as f64 / secs.max(f64::MIN_POSITIVE)
        )?;
        writeln!(f)?;
        let password = if self.default_password {
            format!("\"{DEFAULT_PASSWORD}\"")
        } else {
            "\"<your --password>\"".to_owned()
        };
        writeln!(
            f,
            "log in (every seeded account has the same password) with GraphiQL:"
        )?;
        writeln!(
            f,
            "  mutation {{ login(email: \"{ADMIN_EMAIL}\", password: {password}) {{ token }} }}"
        )?;
        writeln!(f, "  then send the header  Authorization: Bearer <token>")?;
        write!(
            f,
            "  admin: {ADMIN_EMAIL}   seller: {}   buyer: {}",
            seller_email(1),
            buyer_email(1)
        )
    }
}

// ---------------------------------------------------------------------------
// The catalogue the listings are drawn from.

/// A category with what sells in it.
struct Shelf {
    category: &'static str,
    physical: &'static [&'static str],
    digital: &'static [&'static str],
    tags: &'static [&'static str],
    /// Unit price range in whole euros.
    euros: (i64, i64),
    /// Share of DIGITAL listings, in percent.
    digital_pct: u32,
}

const SHELVES: [Shelf; 10] = [
    Shelf {
        category: "electronics",
        physical: &[
            "USB-C hub",
            "mechanical keyboard",
            "noise-cancelling headphones",
            "portable speaker",
            "wireless mouse",
            "phone stand",
            "smart plug",
            "e-reader",
        ],
        digital: &["home automation recipes", "soldering video course"],
        tags: &[
            "usb-c",
            "wireless",
            "bluetooth",
            "refurbished",
            "gadget",
            "desk",
        ],
        euros: (9, 240),
        digital_pct: 10,
    },
    Shelf {
        category: "books",
        physical: &[
            "hardcover novel",
            "cookbook",
            "poetry collection",
            "field guide to mushrooms",
            "graphic novel",
            "travel guide",
        ],
        digital: &[
            "e-book edition",
            "audiobook",
            "short story collection (EPUB)",
        ],
        tags: &[
            "fiction",
            "non-fiction",
            "signed",
            "paperback",
            "classic",
            "kids",
        ],
        euros: (6, 45),
        digital_pct: 35,
    },
    Shelf {
        category: "home",
        physical: &[
            "ceramic mug",
            "linen tablecloth",
            "scented candle",
            "oak cutting board",
            "wool throw blanket",
            "desk lamp",
        ],
        digital: &["printable wall calendar", "interior moodboard kit"],
        tags: &[
            "kitchen",
            "decor",
            "cosy",
            "ceramic",
            "linen",
            "scandinavian",
        ],
        euros: (8, 160),
        digital_pct: 10,
    },
    Shelf {
        category: "garden",
        physical: &[
            "terracotta planter",
            "pruning shears",
            "heirloom tomato seeds",
            "bird feeder",
            "watering can",
            "compost bin",
        ],
        digital: &["planting calendar (PDF)", "garden layout planner"],
        tags: &[
            "organic", "seeds", "outdoor", "balcony", "tools", "wildlife",
        ],
        euros: (4, 120),
        digital_pct: 10,
    },
    Shelf {
        category: "fashion",
        physical: &[
            "merino scarf",
            "leather belt",
            "canvas tote bag",
            "knitted beanie",
            "silk tie",
            "denim jacket",
        ],
        digital: &["sewing pattern (PDF)", "knitting pattern"],
        tags: &[
            "wool",
            "leather",
            "unisex",
            "winter",
            "vintage",
            "slow-fashion",
        ],
        euros: (12, 180),
        digital_pct: 15,
    },
    Shelf {
        category: "toys",
        physical: &[
            "wooden puzzle",
            "building blocks set",
            "plush fox",
            "stunt kite",
            "board game",
            "marble run",
        ],
        digital: &["printable colouring book", "paper-craft templates"],
        tags: &[
            "kids",
            "wooden",
            "educational",
            "family",
            "outdoor",
            "puzzle",
        ],
        euros: (5, 90),
        digital_pct: 15,
    },
    Shelf {
        category: "sports",
        physical: &[
            "yoga mat",
            "climbing chalk bag",
            "resistance bands",
            "insulated water bottle",
            "running cap",
            "foam roller",
        ],
        digital: &["12-week training plan", "marathon pacing guide"],
        tags: &[
            "fitness", "running", "yoga", "climbing", "outdoor", "training",
        ],
        euros: (7, 110),
        digital_pct: 20,
    },
    Shelf {
        category: "music",
        physical: &[
            "vinyl LP",
            "guitar strings",
            "ukulele",
            "cassette tape",
            "harmonica",
            "drumsticks",
        ],
        digital: &[
            "lo-fi sample pack",
            "album download (FLAC)",
            "guitar tab collection",
        ],
        tags: &["vinyl", "indie", "jazz", "samples", "acoustic", "lo-fi"],
        euros: (5, 220),
        digital_pct: 45,
    },
    Shelf {
        category: "art",
        physical: &[
            "watercolour set",
            "framed print",
            "sketchbook",
            "linocut print",
            "brush set",
            "table easel",
        ],
        digital: &[
            "wallpaper pack",
            "digital brush set",
            "high-resolution illustration",
        ],
        tags: &[
            "print",
            "original",
            "watercolour",
            "illustration",
            "poster",
            "supplies",
        ],
        euros: (6, 300),
        digital_pct: 40,
    },
    Shelf {
        category: "software",
        physical: &["programming book bundle", "laptop sticker pack"],
        digital: &[
            "password manager licence",
            "photo editor licence",
            "icon font",
            "website theme",
            "markdown editor",
            "budget spreadsheet template",
        ],
        tags: &[
            "licence",
            "productivity",
            "design",
            "developer",
            "template",
            "lifetime",
        ],
        euros: (3, 150),
        digital_pct: 85,
    },
];

const PHYSICAL_ADJECTIVES: &[&str] = &[
    "Handmade",
    "Vintage",
    "Compact",
    "Eco",
    "Classic",
    "Limited-edition",
    "Minimalist",
    "Deluxe",
    "Refurbished",
    "Artisan",
    "Nordic",
    "Everyday",
    "Travel",
    "Heavy-duty",
];
const DIGITAL_ADJECTIVES: &[&str] = &[
    "Complete",
    "Essential",
    "Deluxe",
    "Beginner's",
    "Pro",
    "Annotated",
    "Extended",
    "Starter",
];
const GENERIC_TAGS: &[&str] = &["gift", "sale", "new", "eco", "bestseller", "handmade"];
const DESCRIPTIONS: &[&str] = &[
    "Made in small batches and checked by hand before it leaves the workshop.",
    "A customer favourite: simple, sturdy and good value.",
    "Exactly what the photos show. Questions welcome before you order.",
    "Carefully sourced; see the photos for the finish and the details.",
    "Our best seller this season, restocked as often as we can.",
];
const SHOP_FIRST: &[&str] = &[
    "Nordic", "Little", "Golden", "Urban", "Wild", "Blue", "Old Town", "Maple", "Harbor", "Copper",
    "Velvet", "Bright", "Quiet", "Sunny",
];
const SHOP_SECOND: &[&str] = &[
    "Workshop",
    "Goods",
    "Studio",
    "Supply Co.",
    "Corner",
    "Market",
    "Atelier",
    "Trading",
    "Collective",
    "House",
];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Ben", "Chloé", "Dario", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kasia",
    "Luca", "Maya", "Noor", "Olav", "Priya", "Quentin", "Rosa", "Sven", "Tomás", "Uma", "Vera",
    "Wen", "Yusuf", "Zoe",
];
const CARRIERS: &[&str] = &["DHL", "UPS", "GLS", "PNL", "DPD"];
const COMMENTS: [&[&str]; 5] = [
    &[
        "Arrived broken and the seller took a week to answer.",
        "Not what the photos show at all. Returning it.",
    ],
    &[
        "Smaller than I expected and the finish is rough.",
        "Works, but it stopped feeling worth the price after a week.",
    ],
    &[
        "Does the job, nothing special.",
        "Fine for the price; delivery took a while.",
    ],
    &[
        "Very good, only a small scuff on the packaging.",
        "Nice quality, would buy from this shop again.",
    ],
    &[
        "Exactly as described, would buy again!",
        "Superb quality and lovingly packed.",
        "My new favourite, already ordered another one as a gift.",
    ],
];
/// Reviews the admin rejects: what was written, and why it is hidden.
const REJECTABLE: &[(&str, &str)] = &[
    (
        "Call me on 0612 345 678 and I'll sell you mine for half",
        "contains personal contact details",
    ),
    (
        "The courier was rude, can't say anything about the item",
        "off-topic: about the delivery, not the item",
    ),
    (
        "Buy it at cheap-deals.example for half the price!!!",
        "advertises another shop",
    ),
];

// ---------------------------------------------------------------------------
// The plan: everything random, drawn up front in a fixed order.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListingFate {
    Publish,
    Draft,
    Delist,
}

#[derive(Clone, Debug)]
enum SpecPlan {
    Physical(u32),
    Digital(String),
}

#[derive(Clone, Debug)]
struct ListingPlan {
    seller: usize,
    title: String,
    description: String,
    category: &'static str,
    tags: Vec<&'static str>,
    price: i64,
    spec: SpecPlan,
    /// A DIGITAL listing's file (its SHA-256 is the spec's hash).
    asset: Option<Vec<u8>>,
    fate: ListingFate,
}

#[derive(Clone, Debug)]
struct OrderPlan {
    buyer: usize,
    /// (listing index, units).
    lines: Vec<(usize, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    Cancel,
    Ship,
    Deliver,
}

#[derive(Clone, Debug)]
enum Moderation {
    Approve,
    Reject(&'static str),
    Leave,
}

fn percent(rng: &mut StdRng, p: u32) -> bool {
    rng.random_range(0..100) < p
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.choose(rng).copied().unwrap_or("item")
}

fn plan_sellers(rng: &mut StdRng, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("{} {}", pick(rng, SHOP_FIRST), pick(rng, SHOP_SECOND)))
        .collect()
}

fn plan_buyers(rng: &mut StdRng, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let initial = char::from(b'A' + rng.random_range(0..26u8));
            format!("{} {initial}.", pick(rng, FIRST_NAMES))
        })
        .collect()
}

/// Deposits per buyer, in cents; the last `poor` buyers get less than any
/// listing costs.
fn plan_deposits(rng: &mut StdRng, args: &SeedArgs, poor: usize) -> Vec<Vec<i64>> {
    // A buyer places about orders/buyers orders; fund them for that.
    let per_buyer = args.orders.div_ceil(args.buyers.max(1));
    let scale = i64::try_from(per_buyer.div_ceil(3).max(1)).unwrap_or(i64::MAX);
    (0..args.buyers)
        .map(|i| {
            if i >= args.buyers - poor {
                return vec![rng.random_range(50..=250)];
            }
            let chunks = rng.random_range(1..=3);
            (0..chunks)
                .map(|_| rng.random_range(100..=800i64).saturating_mul(100 * scale))
                .collect()
        })
        .collect()
}

fn price(rng: &mut StdRng, (lo, hi): (i64, i64)) -> i64 {
    let cents = *[0i64, 49, 90, 95, 99].choose(rng).unwrap_or(&0);
    rng.random_range(lo..=hi) * 100 + cents
}

fn plan_listings(rng: &mut StdRng, args: &SeedArgs, shops: &[String]) -> Vec<ListingPlan> {
    let total = args.sellers * args.listings_per_seller;
    // Units a listing sells on average; stock follows, except for the very
    // small stocks that are there to run out.
    let expected_units = (args.orders * 2).div_ceil(total.max(1));
    let stock_scale = u32::try_from(expected_units.div_ceil(8).max(1)).unwrap_or(u32::MAX);
    let mut plans = Vec::with_capacity(total);
    for (seller, shop) in shops.iter().enumerate() {
        for i in 0..args.listings_per_seller {
            let shelf = &SHELVES[rng.random_range(0..SHELVES.len())];
            let digital = percent(rng, shelf.digital_pct);
            let mut asset = None;
            let (title, spec) = if digital {
                let title = format!(
                    "{} {}",
                    pick(rng, DIGITAL_ADJECTIVES),
                    pick(rng, shelf.digital)
                );
                let mut content = [0u8; 64];
                rng.fill(&mut content[..]);
                let mut file = title.as_bytes().to_vec();
                file.extend_from_slice(&content);
                let hash = hex::encode(Sha256::digest(&file));
                asset = Some(file);
                (title, SpecPlan::Digital(hash))
            } else {
                let title = format!(
                    "{} {}",
                    pick(rng, PHYSICAL_ADJECTIVES),
                    pick(rng, shelf.physical)
                );
                let stock = if percent(rng, 12) {
                    rng.random_range(1..=2)
                } else {
                    rng.random_range(3..=20u32).saturating_mul(stock_scale)
                };
                (title, SpecPlan::Physical(stock))
            };
            let how_many = rng.random_range(1..=3);
            let mut tags: Vec<&'static str> =
                shelf.tags.choose_multiple(rng, how_many).copied().collect();
            if percent(rng, 40) {
                tags.push(pick(rng, GENERIC_TAGS));
            }
            let description = format!("{title} from {}. {}", shop, pick(rng, DESCRIPTIONS));
            // Every seller's first listing is published, so every shop sells.
            let roll = rng.random_range(0..100);
            let fate = if i == 0 || roll < 84 {
                ListingFate::Publish
            } else if roll < 92 {
                ListingFate::Draft
            } else {
                ListingFate::Delist
            };
            plans.push(ListingPlan {
                seller,
                title,
                description,
                category: shelf.category,
                tags,
                price: price(rng, shelf.euros),
                spec,
                asset,
                fate,
            });
        }
    }
    plans
}

/// Orders over published listings, one seller each. Order 0 is a poor
/// buyer's (rejected: insufficient funds) and order 1 asks for more units
/// than a listing ever had (rejected: out of stock); a few more of each are
/// mixed in.
fn plan_orders(
    rng: &mut StdRng,
    args: &SeedArgs,
    listings: &[ListingPlan],
    poor: usize,
) -> Vec<OrderPlan> {
    let published: Vec<usize> = (0..listings.len())
        .filter(|&i| listings[i].fate == ListingFate::Publish)
        .collect();
    let physical: Vec<usize> = published
        .iter()
        .copied()
        .filter(|&i| matches!(listings[i].spec, SpecPlan::Physical(_)))
        .collect();
    let mut by_seller: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &published {
        by_seller.entry(listings[i].seller).or_default().push(i);
    }
    let rich = args.buyers - poor;
    (0..args.orders)
        .map(|n| {
            let roll = rng.random_range(0..100);
            let poor_order = poor > 0 && (n == 0 || (n > 1 && roll < 3));
            let over_ask = !physical.is_empty() && (n == 1 || (n > 1 && (3..6).contains(&roll)));
            if over_ask && !poor_order {
                let listing = physical[rng.random_range(0..physical.len())];
                let stock = match listings[listing].spec {
                    SpecPlan::Physical(s) => s,
                    SpecPlan::Digital(_) => 0,
                };
                return OrderPlan {
                    buyer: rng.random_range(0..rich),
                    lines: vec![(listing, stock + rng.random_range(1..=3))],
                };
            }
            let buyer = if poor_order {
                rich + rng.random_range(0..poor)
            } else {
                rng.random_range(0..rich)
            };
            let first = published[rng.random_range(0..published.len())];
            let shop = &by_seller[&listings[first].seller];
            let want = match rng.random_range(0..100) {
                0..70 => 1,
                70..92 => 2,
                _ => 3,
            };
            let mut chosen = vec![first];
            for &other in shop.choose_multiple(rng, shop.len()) {
                if chosen.len() >= want {
                    break;
                }
                if other != first {
                    chosen.push(other);
                }
            }
            let lines = chosen
                .into_iter()
                .map(|l| {
                    let units = match listings[l].spec {
                        SpecPlan::Digital(_) => 1,
                        SpecPlan::Physical(_) => match rng.random_range(0..100) {
                            0..75 => 1,
                            75..95 => 2,
                            _ => 3,
                        },
                    };
                    (l, units)
                })
                .collect();
            OrderPlan { buyer, lines }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Running it.

/// Runs `f` on every item, `concurrency` at a time, each on its own task,
/// behind a progress bar; results in the items' order.
async fn each<T, R, F, Fut>(
    what: &str,
    concurrency: usize,
    items: Vec<T>,
    f: F,
) -> anyhow::Result<Vec<R>>
where
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<R>> + Send + 'static,
{
    let pb = bar(items.len() as u64, what);
    let results: anyhow::Result<Vec<R>> =
        futures::stream::iter(items.into_iter().map(|item| tokio::spawn(f(item))))
            .buffered(concurrency)
            .map(|joined| {
                pb.inc(1);
                joined
                    .map_err(anyhow::Error::from)
                    .and_then(std::convert::identity)
            })
            .try_collect()
            .await;
    if results.is_ok() {
        pb.finish();
    } else {
        pb.abandon();
    }
    results
}

/// Writes a DIGITAL listing's file to the asset store and records its
/// upload by the seller, as `PUT /assets` does.
async fn store_asset(
    handler: &CommandHandler,
    assets: &marketplace_api::assets::Assets,
    seller: &Actor,
    file: Vec<u8>,
    ctx: &CommandContext,
) -> anyhow::Result<()> {
    use marketplace_domain::asset::{asset_id, Asset, AssetCommand, RecordUpload};
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(file))]);
    let stored = assets.upload(body).await?;
    let command = AssetCommand::RecordUpload(RecordUpload {
        content_hash: stored.content_hash.clone(),
        size: stored.size,
        content_type: marketplace_domain::values::ContentType::parse("application/octet-stream")?,
        uploaded_by: seller.account_id,
        at: Utc::now(),
    });
    handler
        .execute::<Asset>(asset_id(&stored.content_hash), ctx, &command)
        .await?;
    Ok(())
}

fn ctx_of(actor: &Actor) -> CommandContext {
    CommandContext::new(actor.account_id.to_string())
}

/// Fails with [`AlreadySeeded`] if any seeded email is claimed.
async fn refuse_if_seeded(handler: &CommandHandler, args: &SeedArgs) -> anyhow::Result<()> {
    let mut emails = vec![ADMIN_EMAIL.to_owned()];
    if args.sellers > 0 {
        emails.push(seller_email(1));
    }
    if args.buyers > 0 {
        emails.push(buyer_email(1));
    }
    for email in emails {
        let parsed = Email::parse(&email)?;
        let stream = claim_id(&handler.email_index().digest(&parsed));
        let claim = handler.load::<EmailClaim>(stream).await?;
        if claim.state.claimant.is_some() {
            return Err(AlreadySeeded { email }.into());
        }
    }
    Ok(())
}

async fn register_one(
    handler: CommandHandler,
    email: String,
    name: String,
    roles: Vec<Role>,
    channel: RegistrationChannel,
    password_hash: PasswordHash,
) -> anyhow::Result<Actor> {
    let registered = register(
        &handler,
        &CommandContext::new("seed"),
        Registration {
            email: Email::parse(&email)?,
            display_name: DisplayName::parse(&name)?,
            password_hash,
            roles,
            channel,
        },
        Utc::now(),
    )
    .await
    .map_err(|e| match e {
        RegisterError::EmailTaken(_) => anyhow::Error::from(AlreadySeeded {
            email: email.clone(),
        }),
        other => anyhow::anyhow!("could not register {email}: {other}"),
    })?;
    Ok(Actor {
        account_id: registered.account_id,
        roles: registered.account.roles,
    })
}

/// The in-process checkout saga and payout process (on the consumer
/// runtime, as `serve` runs them), with their progress.
struct Processes {
    tasks: Vec<(&'static str, JoinHandle<()>, watch::Receiver<LocalStatus>)>,
    stop: watch::Sender<bool>,
}

impl Processes {
    fn start(pool: &PgPool, store: &Arc<dyn EventStore>, handler: &CommandHandler) -> Self {
        let registry = Registry::default();
        let runner = Runner::new(pool.clone(), store.clone(), registry.clone());
        let (stop, stop_rx) = watch::channel(false);
        let tasks = process::managers(
            handler,
            FeeRate::DEFAULT,
            std::sync::Arc::new(marketplace_commands::payments::SimulatedGateway),
        )
        .into_iter()
        .map(|pm| {
            let name = pm.name();
            let rx = registry.watch(name);
            let task = tokio::spawn(process::run(pm, runner.clone(), stop_rx.clone()));
            (name, task, rx)
        })
        .collect();
        Self { tasks, stop }
    }

    /// Waits until both have handled everything in the log, including what
    /// they appended themselves, with a bar of the log position they are
    /// at. Fails if either stops or stalls.
    async fn settle(&mut self, store: &Arc<dyn EventStore>) -> anyhow::Result<()> {
        let pb = bar(0, "settling");
        let result = self.settle_behind(store, &pb).await;
        if result.is_ok() {
            pb.finish();
        } else {
            pb.abandon();
        }
        result
    }

    async fn settle_behind(
        &mut self,
        store: &Arc<dyn EventStore>,
        pb: &ProgressBar,
    ) -> anyhow::Result<()> {
        loop {
            let head = store.head().await?;
            pb.set_length(head.0);
            for (name, _, rx) in &mut self.tasks {
                loop {
                    let status = rx.borrow_and_update().clone();
                    if status.state == RunnerState::Failed {
                        anyhow::bail!(
                            "the {name} process FAILED at position {}: {}",
                            status.failed_position.unwrap_or(Position::START),
                            status.last_error.unwrap_or_default()
                        );
                    }
                    let at = status.position;
                    pb.set_position(at.0.min(head.0));
                    if at >= head {
                        break;
                    }
                    match tokio::time::timeout(STALL, rx.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => anyhow::bail!("the {name} process stopped (see the log)"),
                        Err(_) => anyhow::bail!(
                            "the {name} process made no progress for {}s",
                            STALL.as_secs()
                        ),
                    }
                }
            }
            if store.head().await? == head {
                return Ok(());
            }
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        for (_, task, _) in self.tasks {
            let _ = task.await;
        }
    }
}

/// Polls the order until the checkout saga has decided it.
async fn await_verdict(handler: &CommandHandler, id: OrderId) -> anyhow::Result<Order> {
    let deadline = Instant::now() + STALL;
    loop {
        let order = handler.load::<Order>(id.0).await?.state;
        if order.status != OrderStatus::Pending {
            return Ok(order);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "order {id} was still PENDING after {}s: is the checkout saga stuck?",
                STALL.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn count_events(pool: &PgPool) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .context("could not count events")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Seeds the database at `database_url` (migrating it first), with the
/// checkout saga and payout process running in this process. Refuses with
/// [`AlreadySeeded`], writing nothing, if the database was seeded before.
/// `master` must be the master key the marketplace serves with.
pub async fn run(
    database_url: &str,
    master: &marketplace_keys::MasterKey,
    args: &SeedArgs,
) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let n = args.password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        anyhow::bail!("the password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters");
    }
    if args.orders > 0 && (args.buyers == 0 || args.sellers == 0 || args.listings_per_seller == 0) {
        anyhow::bail!("orders need buyers, sellers and listings: raise --buyers, --sellers and --listings-per-seller, or pass --orders 0");
    }
    let concurrency = args.concurrency.max(1);
    let pool_size = u32::try_from(concurrency.saturating_mul(2).clamp(8, 40)).unwrap_or(40) + 4;
    let pool = connect(database_url, pool_size).await?;
    let result = seed(&pool, master, args, concurrency, started).await;
    pool.close().await;
    result
}

async fn seed(
    pool: &PgPool,
    master: &marketplace_keys::MasterKey,
    args: &SeedArgs,
    concurrency: usize,
    started: Instant,
) -> anyhow::Result<SeedReport> {
    migrate(pool).await?;
    let sealing = marketplace_api::database::open_event_store(
        pool,
        &marketplace_api::config::EventStoreChoice::Postgres,
        master,
    )
    .await?;
    let handler = marketplace_api::database::command_handler(&sealing).await?;
    let store: Arc<dyn EventStore> = Arc::new(sealing);
    refuse_if_seeded(&handler, args).await?;
    let events_before = count_events(pool).await?;

    // Plan everything random first, in a fixed order.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let poor = if args.buyers >= 2 {
        (args.buyers / 20).max(1)
    } else {
        0
    };
    let shops = plan_sellers(&mut rng, args.sellers);
    let buyer_names = plan_buyers(&mut rng, args.buyers);
    let deposits = plan_deposits(&mut rng, args, poor);
    let listing_plans = plan_listings(&mut rng, args, &shops);
    let order_plans = plan_orders(&mut rng, args, &listing_plans, poor);

    println!(
        "seeding {} sellers × {} listings, {} buyers, {} orders (seed {}, {} concurrent)",
        args.sellers, args.listings_per_seller, args.buyers, args.orders, args.seed, concurrency
    );
    let password = args.password.clone();
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await?
        .map_err(|e| anyhow::anyhow!("could not hash the password: {e}"))?;

    let mut processes = Processes::start(pool, &store, &handler);
    let assets = match &args.assets_dir {
        Some(dir) => Some(
            marketplace_api::assets::Assets::open(&marketplace_api::assets::AssetsSettings::local(
                dir.clone(),
            ))
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let outcome = seed_with_processes(
        &handler,
        assets,
        &mut rng,
        concurrency,
        password_hash,
        (
            &shops,
            &buyer_names,
            &deposits,
            &listing_plans,
            &order_plans,
        ),
    )
    .await;
    let settled = match outcome {
        Ok(counts) => processes.settle(&store).await.map(|()| counts),
        Err(e) => Err(e),
    };
    processes.stop().await;
    let Counts {
        orders,
        rejections,
        reviews,
    } = settled?;

    let events_total = count_events(pool).await?;
    let mut listings = [("published", 0), ("draft", 0), ("delisted", 0)];
    for l in &listing_plans {
        let slot = match l.fate {
            ListingFate::Publish => 0,
            ListingFate::Draft => 1,
            ListingFate::Delist => 2,
        };
        listings[slot].1 += 1;
    }
    let digital = listing_plans
        .iter()
        .filter(|l| matches!(l.spec, SpecPlan::Digital(_)))
        .count();
    Ok(SeedReport {
        seed: args.seed,
        sellers: args.sellers,
        buyers: args.buyers,
        poor_buyers: poor,
        listings,
        physical: listing_plans.len() - digital,
        digital,
        orders,
        rejections,
        reviews,
        events_appended: events_total.saturating_sub(events_before),
        events_total,
        elapsed: started.elapsed(),
        default_password: args.password == DEFAULT_PASSWORD,
    })
}

type Plans<'a> = (
    &'a [String],
    &'a [String],
    &'a [Vec<i64>],
    &'a [ListingPlan],
    &'a [OrderPlan],
);

/// Final statuses, as the last command on each aggregate left them.
struct Counts {
    orders: Vec<(OrderStatus, usize)>,
    rejections: BTreeMap<String, usize>,
    reviews: Vec<(ReviewStatus, usize)>,
}

async fn seed_with_processes(
    handler: &CommandHandler,
    assets: Option<marketplace_api::assets::Assets>,
    rng: &mut StdRng,
    concurrency: usize,
    password_hash: PasswordHash,
    (shops, buyer_names, deposits, listing_plans, order_plans): Plans<'_>,
) -> anyhow::Result<Counts> {
    // Accounts: the admin first (its claim is what a second run finds).
    let admin = register_one(
        handler.clone(),
        ADMIN_EMAIL.to_owned(),
        "Marketplace Admin".to_owned(),
        vec![Role::Admin],
        RegistrationChannel::Operator,
        password_hash.clone(),
    )
    .await?;
    let people: Vec<(String, String, Vec<Role>)> = shops
        .iter()
        .enumerate()
        .map(|(i, name)| (seller_email(i + 1), name.clone(), vec![Role::Seller]))
        .chain(
            buyer_names
                .iter()
                .enumerate()
                .map(|(i, name)| (buyer_email(i + 1), name.clone(), vec![Role::Buyer])),
        )
        .collect();
    let mut actors = each("accounts", concurrency, people, |(email, name, roles)| {
        register_one(
            handler.clone(),
            email,
            name,
            roles,
            RegistrationChannel::SelfService,
            password_hash.clone(),
        )
    })
    .await?;
    let buyers = actors.split_off(shops.len());
    let sellers = actors;

    // Funds.
    let items: Vec<(AccountId, i64)> = deposits
        .iter()
        .enumerate()
        .flat_map(|(i, amounts)| amounts.iter().map(move |a| (i, *a)))
        .map(|(i, a)| (buyers[i].account_id, a))
        .collect();
    each("deposits", concurrency, items, |(id, minor)| {
        let handler = handler.clone();
        async move {
            let command = AccountCommand::Deposit(DepositFunds {
                deposit_id: Uuid::now_v7(),
                amount: eur(minor)?,
                at: Utc::now(),
            });
            handler
                .execute::<Account>(id.0, &CommandContext::new(id.to_string()), &command)
                .await?;
            Ok(())
        }
    })
    .await?;

    // Listings: created as drafts, most published, a few delisted again.
    let listing_ids = each(
        "listings",
        concurrency,
        listing_plans.to_vec(),
        |plan: ListingPlan| {
            let handler = handler.clone();
            let seller = sellers[plan.seller].clone();
            let assets = assets.clone();
            async move {
                let id = ListingId(Uuid::now_v7());
                let ctx = ctx_of(&seller);
                if let (Some(assets), Some(file)) = (&assets, plan.asset.clone()) {
                    store_asset(&handler, assets, &seller, file, &ctx).await?;
                }
                let spec = match plan.spec {
                    SpecPlan::Physical(units) => ListingSpec::Physical {
                        quantity: Quantity(units),
                    },
                    SpecPlan::Digital(hash) => ListingSpec::Digital {
                        content_hash: ContentHash::parse(&hash)?,
                    },
                };
                let create = ListingCommand::Create(CreateListing {
                    listing_id: id,
                    actor: seller.clone(),
                    spec,
                    title: Title::parse(&plan.title)?,
                    description: Description::parse(&plan.description)?,
                    category: Category::parse(plan.category)?,
                    tags: Tags::parse(plan.tags.iter().copied())?,
                    price: eur(plan.price)?,
                    at: Utc::now(),
                });
                handler.execute::<Listing>(id.0, &ctx, &create).await?;
                if plan.fate != ListingFate::Draft {
                    let publish = ListingCommand::Publish(PublishListing {
                        actor: seller.clone(),
                        at: Utc::now(),
                    });
                    handler.execute::<Listing>(id.0, &ctx, &publish).await?;
                }
                if plan.fate == ListingFate::Delist {
                    let delist = ListingCommand::Change(SellerChange {
                        actor: seller.clone(),
                        change: Change::Delist,
                        at: Utc::now(),
                    });
                    handler.execute::<Listing>(id.0, &ctx, &delist).await?;
                }
                Ok(id)
            }
        },
    )
    .await?;

    // Orders, placed as the placeOrder mutation places them: each line's
    // seller, kind and price looked up on the write side now.
    let items: Vec<(Actor, Vec<(ListingId, Quantity)>)> = order_plans
        .iter()
        .map(|o| {
            (
                buyers[o.buyer].clone(),
                o.lines
                    .iter()
                    .map(|(l, q)| (listing_ids[*l], Quantity(*q)))
                    .collect(),
            )
        })
        .collect();
    let order_ids = each("orders", concurrency, items, |(buyer, wanted)| {
        let handler = handler.clone();
        async move {
            let lines = price_lines(&handler, &wanted).await?;
            let order_id = OrderId(Uuid::now_v7());
            let place = OrderCommand::Place(PlaceOrder {
                order_id,
                buyer: buyer.clone(),
                lines,
                at: Utc::now(),
            });
            handler
                .execute::<Order>(order_id.0, &ctx_of(&buyer), &place)
                .await?;
            Ok(order_id)
        }
    })
    .await?;

    // The checkout saga's verdicts.
    let decided = each("checkout", concurrency, order_ids.clone(), |id| {
        let handler = handler.clone();
        async move { await_verdict(&handler, id).await }
    })
    .await?;

    // Confirmed orders move on: cancelled, shipped, delivered or left as
    // they are. The first four take one fate each, so every state occurs.
    let mut fates = Vec::new();
    for (i, order) in decided.iter().enumerate() {
        if order.status != OrderStatus::Confirmed {
            continue;
        }
        let fate = match fates.len() {
            0 => Fate::Deliver,
            1 => Fate::Ship,
            2 => Fate::Cancel,
            3 => Fate::Keep,
            _ => match rng.random_range(0..100) {
                0..50 => Fate::Deliver,
                50..65 => Fate::Ship,
                65..77 => Fate::Cancel,
                _ => Fate::Keep,
            },
        };
        let carrier = pick(rng, CARRIERS);
        let tracking = format!("{carrier}-{:010}", rng.random_range(0..10_000_000_000u64));
        fates.push((i, fate, tracking));
    }
    let items: Vec<(Order, Fate, String)> = fates
        .iter()
        .map(|(i, fate, tracking)| (decided[*i].clone(), *fate, tracking.clone()))
        .collect();
    let moved = each(
        "fulfilment",
        concurrency,
        items,
        |(order, fate, tracking)| {
            let handler = handler.clone();
            async move { fulfil(&handler, order, fate, &tracking).await }
        },
    )
    .await?;
    let mut finals = decided;
    for ((i, _, _), order) in fates.iter().zip(moved) {
        finals[*i] = order;
    }

    // Reviews of delivered lines; the admin approves most, rejects a few
    // and leaves a few for you to moderate.
    let mut reviews = Vec::new();
    for order in finals.iter().filter(|o| o.status == OrderStatus::Delivered) {
        let (Some(order_id), Some(buyer_id)) = (order.id, order.buyer_id) else {
            continue;
        };
        for line in &order.lines {
            if !percent(rng, 60) {
                continue;
            }
            let moderation = match reviews.len() {
                0 => Moderation::Approve,
                1 => Moderation::Reject(""),
                _ => match rng.random_range(0..100) {
                    0..85 => Moderation::Approve,
                    85..93 => Moderation::Reject(""),
                    _ => Moderation::Leave,
                },
            };
            let (comment, moderation, stars) = match moderation {
                Moderation::Reject(_) => {
                    let (comment, reason) = REJECTABLE[rng.random_range(0..REJECTABLE.len())];
                    (comment, Moderation::Reject(reason), rng.random_range(1..=5))
                }
                other => {
                    let stars = match rng.random_range(0..100) {
                        0..5 => 1,
                        5..12 => 2,
                        12..27 => 3,
                        27..60 => 4,
                        _ => 5,
                    };
                    (pick(rng, COMMENTS[stars as usize - 1]), other, stars)
                }
            };
            let facts = OrderFacts {
                order_id,
                buyer_id,
                status: order.status,
                listing_ids: order.lines.iter().map(|l| l.listing_id).collect(),
            };
            let author = buyers
                .iter()
                .find(|b| b.account_id == buyer_id)
                .cloned()
                .context("the order's buyer is not a seeded buyer")?;
            reviews.push((author, line.listing_id, facts, stars, comment, moderation));
        }
    }
    let submitted = each(
        "reviews",
        concurrency,
        reviews.clone(),
        |(author, listing_id, facts, stars, comment, _)| {
            let handler = handler.clone();
            async move {
                let review_id = ReviewId::for_line(facts.order_id, listing_id);
                let submit = ReviewCommand::Submit(SubmitReview {
                    author: author.clone(),
                    listing_id,
                    order: Some(facts),
                    rating: Rating::parse(stars)?,
                    comment: ReviewComment::parse(comment)?,
                    at: Utc::now(),
                });
                let done = handler
                    .execute::<Review>(review_id.0, &ctx_of(&author), &submit)
                    .await?;
                Ok((review_id, done.state.status))
            }
        },
    )
    .await?;
    let decisions: Vec<(ReviewId, Decision)> = submitted
        .iter()
        .zip(&reviews)
        .filter_map(|((id, _), (.., moderation))| match moderation {
            Moderation::Approve => Some((*id, Decision::Approve)),
            Moderation::Reject(reason) => Some((*id, Decision::Reject(Reason::parse(reason).ok()))),
            Moderation::Leave => None,
        })
        .collect();
    let moderated = each("moderation", concurrency, decisions, |(id, decision)| {
        let handler = handler.clone();
        let admin = admin.clone();
        async move {
            let moderate = ReviewCommand::Moderate(ModerateReview {
                moderator: admin.clone(),
                decision,
                at: Utc::now(),
            });
            let done = handler
                .execute::<Review>(id.0, &ctx_of(&admin), &moderate)
                .await?;
            Ok((id, done.state.status))
        }
    })
    .await?;
    let mut review_status: BTreeMap<ReviewId, ReviewStatus> = submitted.into_iter().collect();
    review_status.extend(moderated);

    let mut rejections = BTreeMap::new();
    for o in finals.iter().filter(|o| o.status == OrderStatus::Rejected) {
        let reason = o.status_reason.as_ref().map_or("", |r| r.as_str());
        *rejections.entry(reason.to_owned()).or_insert(0) += 1;
    }
    let orders = [
        OrderStatus::Delivered,
        OrderStatus::Shipped,
        OrderStatus::Confirmed,
        OrderStatus::Cancelled,
        OrderStatus::Rejected,
        OrderStatus::Pending,
    ]
    .into_iter()
    .map(|s| (s, finals.iter().filter(|o| o.status == s).count()))
    .collect();
    let reviews = [
        ReviewStatus::Approved,
        ReviewStatus::Rejected,
        ReviewStatus::Pending,
    ]
    .into_iter()
    .map(|s| (s, review_status.values().filter(|v| **v == s).count()))
    .collect();
    Ok(Counts {
        orders,
        rejections,
        reviews,
    })
}

/// Takes a confirmed order to its fate, as its buyer and seller would.
async fn fulfil(
    handler: &CommandHandler,
    order: Order,
    fate: Fate,
    tracking: &str,
) -> anyhow::Result<Order> {
    let (Some(id), Some(buyer), Some(seller)) = (order.id, order.buyer_id, order.seller_id) else {
        anyhow::bail!("a confirmed order without id, buyer or seller");
    };
    let buyer = Actor {
        account_id: buyer,
        roles: vec![Role::Buyer],
    };
    let seller = Actor {
        account_id: seller,
        roles: vec![Role::Seller],
    };
    let act = |actor: &Actor, step: Step| {
        let (handler, actor) = (handler.clone(), actor.clone());
        async move {
            let command = OrderCommand::Fulfil(Fulfil {
                actor: actor.clone(),
                step,
                at: Utc::now(),
            });
            Ok::<_, anyhow::Error>(
                handler
                    .execute::<Order>(id.0, &ctx_of(&actor), &command)
                    .await?
                    .state,
            )
        }
    };
    let ship = || act(&seller, Step::Ship(TrackingCode::parse(tracking).ok()));
    Ok(match fate {
        Fate::Keep => order,
        Fate::Cancel => act(&buyer, Step::Cancel).await?,
        Fate::Ship => ship().await?,
        Fate::Deliver => {
            ship().await?;
            act(&buyer, Step::ConfirmDelivery(FeeRate::DEFAULT)).await?
        }
    })
}

#[cfg(test)]
mod tests {
    use marketplace_domain::listing::ListingKind;

    use super::*;

    fn kind(plan: &ListingPlan) -> ListingKind {
        match plan.spec {
            SpecPlan::Physical(_) => ListingKind::Physical,
            SpecPlan::Digital(_) => ListingKind::Digital,
        }
    }

    fn plan(args: &SeedArgs) -> (Vec<ListingPlan>, Vec<OrderPlan>) {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let shops = plan_sellers(&mut rng, args.sellers);
        let _ = plan_buyers(&mut rng, args.buyers);
        let _ = plan_deposits(&mut rng, args, 5);
        let listings = plan_listings(&mut rng, args, &shops);
        let orders = plan_orders(&mut rng, args, &listings, 5);
        (listings, orders)
    }

    #[test]
    fn the_same_seed_plans_the_same_marketplace() {
        let args = SeedArgs::default();
        let (a, oa) = plan(&args);
        let (b, ob) = plan(&args);
        assert_eq!(
            a.iter().map(|l| &l.title).collect::<Vec<_>>(),
            b.iter().map(|l| &l.title).collect::<Vec<_>>()
        );
        assert_eq!(
            oa.iter().map(|o| o.lines.clone()).collect::<Vec<_>>(),
            ob.iter().map(|o| o.lines.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_value_of_the_plan_is_valid_and_orders_stay_with_one_published_shop() {
        let args = SeedArgs::default();
        let (listings, orders) = plan(&args);
        assert!(listings.iter().any(|l| kind(l) == ListingKind::Digital));
        assert!(listings.iter().any(|l| kind(l) == ListingKind::Physical));
        for l in &listings {
            Title::parse(&l.title).expect("title");
            Description::parse(&l.description).expect("description");
            Tags::parse(l.tags.iter().copied()).expect("tags");
            if let SpecPlan::Digital(h) = &l.spec {
                ContentHash::parse(h).expect("hash");
            }
            assert!(l.price >= 300);
        }
        for o in &orders {
            let seller = listings[o.lines[0].0].seller;
            assert!(o.lines.iter().all(|(l, q)| listings[*l].seller == seller
                && listings[*l].fate == ListingFate::Publish
                && *q > 0));
        }
        // Order 1 asks for more than its listing ever had.
        let (l, q) = orders[1].lines[0];
        assert!(matches!(listings[l].spec, SpecPlan::Physical(s) if q > s));
    }
}

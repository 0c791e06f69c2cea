//! A real Postgres event store with the checkout saga and the payout process
//! running, and helpers to set up a marketplace through the command path.

#![allow(dead_code)]

pub mod flash_sale;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use marketplace_commands::flows::place_order::price_lines;
use marketplace_commands::process::checkout::CheckoutSaga;
use marketplace_commands::process::payout::PayoutProcess;
use marketplace_commands::process::{self, ProcessManager};
use marketplace_commands::{CommandContext, CommandHandler};
use marketplace_consumers::{LocalStatus, Registry, Runner, RunnerConfig, RunnerState};
use marketplace_domain::account::{
    Account, AccountCommand, DepositFunds, RegisterAccount, RegistrationChannel,
};
use marketplace_domain::listing::{
    CreateListing, Listing, ListingCommand, ListingSpec, PublishListing,
};
use marketplace_domain::order::{Order, OrderCommand, OrderStatus, PlaceOrder};
use marketplace_domain::values::*;
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::EventStore;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Market {
    pub pool: PgPool,
    pub store: Arc<dyn EventStore>,
    pub handler: CommandHandler,
}

pub fn eur(minor: i64) -> Money {
    Money {
        minor,
        currency: Currency::parse("EUR").expect("valid"),
    }
}

pub async fn market() -> Market {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    marketplace_store::postgres::migrate(&pool)
        .await
        .expect("store migrations");
    let store: Arc<dyn EventStore> =
        Arc::new(PostgresEventStore::new(pool.clone()).await.expect("store"));
    market_on(pool, store).await
}

/// A market whose log is `store`; `pool` (a fresh test database) holds the
/// process managers' checkpoints.
pub async fn market_on(pool: PgPool, store: Arc<dyn EventStore>) -> Market {
    process::migrate(&pool).await.expect("process migrations");
    let handler = CommandHandler::new(store.clone());
    Market {
        pool,
        store,
        handler,
    }
}

impl Market {
    pub fn ctx(&self) -> CommandContext {
        CommandContext::new("test")
    }

    pub async fn account(&self, roles: Vec<Role>, deposit: i64) -> Actor {
        let id = AccountId(Uuid::now_v7());
        let register = AccountCommand::Register(RegisterAccount {
            account_id: id,
            email: Email::parse(&format!("{}@example.com", id.0.simple())).expect("email"),
            display_name: DisplayName::parse("Someone").expect("name"),
            password_hash: PasswordHash::from_phc("$argon2id$v=19$test".into()).expect("hash"),
            roles: roles.clone(),
            channel: RegistrationChannel::SelfService,
            at: Utc::now(),
        });
        let state = self
            .handler
            .execute::<Account>(id.0, &self.ctx(), &register)
            .await
            .expect("register")
            .state;
        if deposit > 0 {
            self.handler
                .execute::<Account>(
                    id.0,
                    &self.ctx(),
                    &AccountCommand::Deposit(DepositFunds {
                        deposit_id: Uuid::now_v7(),
                        amount: eur(deposit),
                        at: Utc::now(),
                    }),
                )
                .await
                .expect("deposit");
        }
        Actor {
            account_id: id,
            roles: state.roles,
        }
    }

    /// A new seller with one published physical listing of `stock` units
    /// at `price` cents.
    pub async fn stocked(&self, stock: u32, price: i64) -> (Actor, ListingId) {
        let seller = self.account(vec![Role::Seller], 0).await;
        let listing = self
            .listing(
                &seller,
                ListingSpec::Physical {
                    quantity: Quantity(stock),
                },
                price,
            )
            .await;
        (seller, listing)
    }

    pub async fn listing(&self, seller: &Actor, spec: ListingSpec, price: i64) -> ListingId {
        let id = ListingId(Uuid::now_v7());
        let create = ListingCommand::Create(CreateListing {
            listing_id: id,
            actor: seller.clone(),
            spec,
            title: Title::parse("Limited sneakers").expect("title"),
            description: Description::parse("Black Friday drop").expect("description"),
            category: Category::parse("shoes").expect("category"),
            tags: Tags::parse(["limited"]).expect("tags"),
            price: eur(price),
            at: Utc::now(),
        });
        self.handler
            .execute::<Listing>(id.0, &self.ctx(), &create)
            .await
            .expect("create");
        self.handler
            .execute::<Listing>(
                id.0,
                &self.ctx(),
                &ListingCommand::Publish(PublishListing {
                    actor: seller.clone(),
                    at: Utc::now(),
                }),
            )
            .await
            .expect("publish");
        id
    }

    /// Places an order the way the API does: prices looked up now.
    pub async fn place(&self, buyer: &Actor, listing: ListingId, quantity: u32) -> OrderId {
        let lines = price_lines(&self.handler, &[(listing, Quantity(quantity))])
            .await
            .expect("price the line");
        let id = OrderId(Uuid::now_v7());
        let place = OrderCommand::Place(PlaceOrder {
            order_id: id,
            buyer: buyer.clone(),
            lines,
            at: Utc::now(),
        });
        self.handler
            .execute::<Order>(id.0, &self.ctx(), &place)
            .await
            .expect("place");
        id
    }

    pub fn start_checkout(&self, saga: CheckoutSaga) -> Running {
        self.start(Arc::new(saga))
    }

    pub fn start_payout(&self, payout: PayoutProcess) -> Running {
        self.start(Arc::new(payout))
    }

    /// Runs `pm` on the real consumer runtime: one attempt per event (a
    /// failure makes it FAILED at once), quick lock retries.
    pub fn start(&self, pm: Arc<dyn ProcessManager>) -> Running {
        let registry = Registry::default();
        let runner = Runner::new(self.pool.clone(), self.store.clone(), registry.clone())
            .with_config(RunnerConfig {
                max_attempts: 1,
                lock_retry: Duration::from_millis(50),
                ..RunnerConfig::default()
            });
        let (stop, stop_rx) = watch::channel(false);
        let name = pm.name();
        Running {
            name,
            status: registry.watch(name),
            task: tokio::spawn(process::run(pm, runner, stop_rx)),
            _stop: stop,
        }
    }

    pub fn saga(&self) -> CheckoutSaga {
        CheckoutSaga::new(self.handler.clone(), FeeRate::DEFAULT)
    }

    pub async fn order(&self, id: OrderId) -> Order {
        self.handler.load::<Order>(id.0).await.expect("order").state
    }

    /// Polls (with a deadline) until `done` holds for every order.
    pub async fn wait_orders(&self, ids: &[OrderId], done: impl Fn(&Order) -> bool) -> Vec<Order> {
        let start = Instant::now();
        loop {
            let mut orders = Vec::with_capacity(ids.len());
            for id in ids {
                orders.push(self.order(*id).await);
            }
            if orders.iter().all(&done) {
                return orders;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "orders did not settle: {:?}",
                orders.iter().map(|o| o.status).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wallet(&self, id: AccountId) -> Account {
        self.handler
            .load::<Account>(id.0)
            .await
            .expect("account")
            .state
    }

    /// Every wallet plus every escrow, in EUR minor units.
    pub async fn money_in(&self, accounts: &[AccountId]) -> i64 {
        let mut sum = 0;
        for id in accounts {
            let a = self.wallet(*id).await;
            sum += a.balance(&eur(0).currency).minor;
            sum += a.escrow.values().map(|m| m.minor).sum::<i64>();
        }
        sum
    }
}

pub fn settled(o: &Order) -> bool {
    o.status != OrderStatus::Pending
}

/// A process manager running in this test.
pub struct Running {
    name: &'static str,
    status: watch::Receiver<LocalStatus>,
    task: JoinHandle<()>,
    _stop: watch::Sender<bool>,
}

impl Running {
    /// Waits (with a deadline) until it is FAILED; returns its status.
    pub async fn failed(&mut self) -> LocalStatus {
        let name = self.name;
        tokio::time::timeout(
            DEADLINE,
            self.status.wait_for(|s| s.state == RunnerState::Failed),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} did not fail"))
        .expect("the runner is alive")
        .clone()
    }

    /// Kills it, as a crash of its process would (its lock connection
    /// closes with the task).
    pub fn abort(&self) {
        self.task.abort();
    }
}

//! The API's error taxonomy and its one mapping to GraphQL `extensions.code`.

use async_graphql::ErrorExtensions;

/// Every error a resolver can return. [`ApiError::into_graphql`] is the only
/// place these become GraphQL errors; internal failures are logged there,
/// once, with a reference the client can quote, and never shown.
///
/// It deliberately does not implement `Display`: async-graphql converts any
/// `Display` type into an error *without* a code, and that path must not
/// exist for this type.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// The input is malformed or breaks a rule.
    BadUserInput(String),
    /// No valid credentials.
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    Forbidden(String),
    /// No such thing (or not visible to the caller).
    NotFound(String),
    /// The state changed underneath, or a uniqueness rule was hit.
    Conflict(String),
    /// An idempotency key was reused with different input.
    IdempotencyKeyReused,
    /// Too many requests; retry after this many seconds.
    RateLimited {
        /// Seconds until the client's next request can pass (at least 1).
        retry_after_seconds: u64,
    },
    /// A dependency (the payment provider) is down; retry after this many
    /// seconds (the response carries `Retry-After`).
    Unavailable {
        /// What the client is told.
        message: String,
        /// Seconds until a retry may pass (at least 1).
        retry_after_seconds: u64,
    },
    /// Anything else: logged, never shown.
    Internal(String),
}

impl ApiError {
    /// The contract's code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadUserInput(_) => "BAD_USER_INPUT",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    /// The message the client sees.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadUserInput(m)
            | ApiError::Unauthenticated(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m) => m.clone(),
            ApiError::IdempotencyKeyReused => {
                "this idempotency key was already used with different input".into()
            }
            ApiError::RateLimited { .. } => "too many requests; retry later".into(),
            ApiError::Unavailable { message, .. } => message.clone(),
            ApiError::Internal(_) => "internal error".into(),
        }
    }

    /// An internal failure with its (private) detail.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::Internal(detail.to_string())
    }

    /// The GraphQL error the client sees.
    pub fn into_graphql(self) -> async_graphql::Error {
        let code = self.code();
        match &self {
            ApiError::Internal(detail) => {
                let reference = uuid::Uuid::now_v7();
                tracing::error!(%reference, detail = %detail, "internal error");
                async_graphql::Error::new(format!("internal error (reference {reference})"))
                    .extend_with(|_, e| {
                        e.set("code", code);
                        e.set("reference", reference.to_string());
                    })
            }
            ApiError::RateLimited {
                retry_after_seconds,
            }
            | ApiError::Unavailable {
                retry_after_seconds,
                ..
            } => {
                let retry = *retry_after_seconds;
                async_graphql::Error::new(self.message()).extend_with(|_, e| {
                    e.set("code", code);
                    e.set("retryAfterSeconds", retry);
                })
            }
            _ => async_graphql::Error::new(self.message()).extend_with(|_, e| e.set("code", code)),
        }
    }

    /// Gives every error of `response` that has no code one: errors raised by
    /// async-graphql itself (parse and validation errors, such as a query
    /// nested too deep or too complex, or a variable of the wrong type) are
    /// the client's fault, so they become `BAD_USER_INPUT`. Resolvers'
    /// errors already carry their code.
    pub fn code_request_errors(response: &mut async_graphql::Response) {
        for error in &mut response.errors {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            if extensions.get("code").is_none() {
                extensions.set("code", ApiError::BadUserInput(String::new()).code());
            }
        }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        e.into_graphql()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<marketplace_projections::read_models::InvalidCursor> for ApiError {
    fn from(_: marketplace_projections::read_models::InvalidCursor) -> Self {
        ApiError::BadUserInput("after is not a valid cursor".into())
    }
}

impl From<marketplace_domain::values::ValueError> for ApiError {
    fn from(e: marketplace_domain::values::ValueError) -> Self {
        ApiError::BadUserInput(e.to_string())
    }
}

impl From<async_graphql::Error> for ApiError {
    fn from(e: async_graphql::Error) -> Self {
        // Only context look-ups produce these inside resolvers: a wiring bug.
        ApiError::internal(e.message)
    }
}

/// Result of a resolver. Resolvers return [`ApiError`], never a bare
/// `async_graphql::Error`, so every failure passes through
/// [`ApiError::into_graphql`] and carries a code.
pub type ApiResult<T> = Result<T, ApiError>;

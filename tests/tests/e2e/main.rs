//! End to end through the real gateway, Redis, RabbitMQ, Chromium and embedded Qdrant, with the fixture
//! model and search API standing in for the LLM and the web search engine.

mod browser;
mod capacity;
mod dashboard;
mod durable;
mod helpers;
mod mind;
mod observe;
mod privilege;
mod steer;

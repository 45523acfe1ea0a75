//! `tidewater` renamed to `wf` in Cargo.toml: `#[workflow(crate = "wf")]` and
//! `#[event(crate = "wf")]` point the generated code at it (no `::tidewater` in scope).

use wf::prelude::*;

#[derive(Debug, Clone, wf::Event)]
#[event(crate = "wf")]
struct Middle(u32);

struct Renamed;

#[wf::workflow(crate = "wf")]
impl Renamed {
    #[step]
    async fn first(&self, ev: StartEvent<u32>) -> Middle {
        Middle(ev.0 + 1)
    }

    #[step(num_workers = 2)]
    async fn second(&self, ctx: &Context<Self>, ev: Middle) -> StopEvent<u32> {
        ctx.write_event_to_stream(Middle(0));
        StopEvent(ev.0 * 2)
    }
}

#[tokio::test]
async fn a_renamed_core_crate_works_with_the_crate_option() {
    assert_eq!(Renamed.run(4).await.unwrap(), 10);
    assert!(Renamed::graph().validate().is_ok());
    assert!(<Middle as wf::Event>::NAME.ends_with("renamed::Middle"));
}

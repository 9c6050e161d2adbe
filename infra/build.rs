// `sqlx::migrate!("../migrations")` embeds the migrations at compile time,
// but cargo does not know the macro reads that directory: without this, a
// new migration file leaves an already-built binary without it (seen:
// "migration ... was previously applied but is missing").
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

//! `ckptctl check`: what this machine's kernel, and the privileges ckptctl runs with (run it as
//! the user that runs ckptd), let ckpt do, feature by feature (see `ckpt_sys::probe`). Needs no
//! ckptd. Exit code 0 when everything works, 1 when something does not.

pub fn run(json: bool) -> i32 {
    let all = ckpt_sys::probe::all();
    if json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|f| {
                serde_json::json!({
                    "feature": f.name,
                    "ok": f.ok,
                    "detail": f.detail,
                    "used_for": f.used_for,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        let width = all.iter().map(|f| f.name.len()).max().unwrap_or(0);
        for f in &all {
            let mark = if f.ok { "ok  " } else { "NO  " };
            println!("{mark}{:<width$}  {}", f.name, f.detail);
            println!("    {:<width$}  used for {}", "", f.used_for);
        }
    }
    if all.iter().all(|f| f.ok) {
        0
    } else {
        1
    }
}

use super::{Auth, BlResult, Ctx};
use axum::Json;
use serde_json::{json, Map, Value};

pub async fn instance_types_available(ctx: Ctx, Auth(caller): Auth) -> BlResult<Json<Value>> {
    let types = ctx.0.instance_types_available(&caller).await?;
    let data: Vec<Value> = types
        .iter()
        .map(|a| {
            let t = &a.instance_type;
            let mut specs = json!({
                "vcpus": t.vcpus, "memory_gib": t.memory_gib, "storage_gib": t.storage_gib, "gpus": t.gpus,
            });
            if let Some(m) = &t.gpu_model {
                specs["gpu_model"] = json!(m);
            }
            json!({
                "id": t.name,
                "instance_type": {
                    "name": t.name,
                    "description": t.description,
                    "gpu_description": t.gpu_description,
                    "price_cents_per_hour": t.price_cents_per_hour,
                    "specs": specs,
                },
                "regions_with_capacity_available": a.regions.iter().map(|r| json!({
                    "name": r.name,
                    "description": r.description,
                    "location": { "city": r.city, "state": r.state, "country": r.country },
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn templates(ctx: Ctx, Auth(caller): Auth) -> BlResult<Json<Value>> {
    let list: Vec<Value> = ctx
        .0
        .templates(&caller)?
        .iter()
        .map(|t| {
            json!({
                "name": t.name, "vmid": t.vmid, "display_name": t.display_name,
                "os_type": t.os_type, "has_nvidia": t.has_nvidia,
            })
        })
        .collect();
    Ok(Json(json!({ "total": list.len(), "templates": list })))
}

/// Staff only: free capacity per host, from the same rows placement reserves against.
pub async fn resources(ctx: Ctx, Auth(caller): Auth) -> BlResult<Json<Value>> {
    let mut hosts = Map::new();
    for r in ctx.0.resources(&caller).await? {
        let free = r.host.free();
        hosts.insert(
            r.host.id.clone(),
            json!({
                "city": r.region.as_ref().map(|g| g.city.clone()),
                "state": r.region.as_ref().map(|g| g.state.clone()),
                "region": r.host.region,
                "status": r.host.status,
                "cores_available": free.cores,
                "memory_available": free.memory_gb,
                "storage_available": free.disk_gb,
                "gpu_model": r.host.gpu_model,
                "gpus_available": free.gpus,
            }),
        );
    }
    Ok(Json(json!({ "hosts": hosts })))
}

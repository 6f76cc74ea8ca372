//! Real cgroup paths, as `/proc/<pid>/cgroup` shows them on nodes of each runtime, driver and
//! cgroup version (collected from bug reports and runtime test suites; the podman cgroupfs
//! samples of a hybrid host come from this project's own podman runs). Two cases whose
//! description says "shape only" have made-up ids in a documented layout.

use super::*;

struct Case {
    what: &'static str,
    path: &'static str,
    id: Option<&'static str>,
    runtime: Option<Runtime>,
    pod: Option<&'static str>,
}

const fn case(
    what: &'static str,
    path: &'static str,
    id: Option<&'static str>,
    runtime: Option<Runtime>,
    pod: Option<&'static str>,
) -> Case {
    Case {
        what,
        path,
        id,
        runtime,
        pod,
    }
}

use Runtime::*;

const CASES: &[Case] = &[
    // containerd
    case(
        "containerd, systemd driver, cgroup v2 (EKS, GKE COS, kubeadm)",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod70565f42_b704_42f2_83fe_1ffb77a67800.slice/cri-containerd-a678b5127d3f1a1bfd029818c628a8cd106d7b873ff64cd6bfaa7022579cbab5.scope",
        Some("a678b5127d3f1a1bfd029818c628a8cd106d7b873ff64cd6bfaa7022579cbab5"),
        Some(Containerd),
        Some("70565f42-b704-42f2-83fe-1ffb77a67800"),
    ),
    case(
        "containerd, systemd driver, cgroup v1 (Bottlerocket)",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope",
        Some("f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830"),
        Some(Containerd),
        Some("dd1bf9d1-241d-47f5-8e25-12de83135812"),
    ),
    case(
        "containerd, cgroupfs driver, cgroup v1",
        "/kubepods/besteffort/podac04f3f2-1f2c-11e9-b015-1ebee232acfa/605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22",
        Some("605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22"),
        None,
        Some("ac04f3f2-1f2c-11e9-b015-1ebee232acfa"),
    ),
    case(
        "containerd, cgroupfs driver, burstable (blkio line)",
        "/kubepods/burstable/podf6adb0af-0855-4bab-b25b-c853f18d0ce2/35b97177dada20362ab90d90ac63cd54e8a41cf87bea34f270631b6da17f4a93",
        Some("35b97177dada20362ab90d90ac63cd54e8a41cf87bea34f270631b6da17f4a93"),
        None,
        Some("f6adb0af-0855-4bab-b25b-c853f18d0ce2"),
    ),
    case(
        "containerd, systemd driver on v1 without systemd managing the path",
        "/system.slice/containerd.service/kubepods-burstable-poda3b200c9_db51_40b4_9d2d_53f8fdf80d7f.slice:cri-containerd:286b15051ec43375190802e1f40562536980a8fd97e75bb89c7f2eec6f995f17",
        Some("286b15051ec43375190802e1f40562536980a8fd97e75bb89c7f2eec6f995f17"),
        Some(Containerd),
        Some("a3b200c9-db51-40b4-9d2d-53f8fdf80d7f"),
    ),
    case(
        "kind: containerd inside the node's docker container, kubelet cgroup root",
        "/system.slice/docker-fd9d0ea06257a9780827cbc7fd92e3812a54fca26d63e191b73610d5d48b9cbd.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podeab5a334_93fe_48a8_b139_9e8079c1f163.slice/cri-containerd-99f3a16ea25b7724cb56a4f0c0df1113ad9474fbf5545bead97fd5c7f61c13f4.scope",
        Some("99f3a16ea25b7724cb56a4f0c0df1113ad9474fbf5545bead97fd5c7f61c13f4"),
        Some(Containerd),
        Some("eab5a334-93fe-48a8-b139-9e8079c1f163"),
    ),
    case(
        "kind, burstable, without the node container in view",
        "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod3cae2e45_052c_4b11_80d3_4d7b2d2d3464.slice/cri-containerd-2b180104511194aab36fd295d3e217439f3ddb5bc88277f37b4952abee85c40e.scope",
        Some("2b180104511194aab36fd295d3e217439f3ddb5bc88277f37b4952abee85c40e"),
        Some(Containerd),
        Some("3cae2e45-052c-4b11-80d3-4d7b2d2d3464"),
    ),
    case(
        "k3s / kind cgroupfs with a kubelet cgroup root",
        "/kubelet/kubepods/besteffort/podbdd4097d-6795-404e-9bd8-6a1383386198/c79788e0da15a6597263eb2b9c51d05dd1a9a1d08c53c1161dc8c45d2dac6b38",
        Some("c79788e0da15a6597263eb2b9c51d05dd1a9a1d08c53c1161dc8c45d2dac6b38"),
        None,
        Some("bdd4097d-6795-404e-9bd8-6a1383386198"),
    ),
    case(
        "a container's own sub-cgroup (kube-proxy)",
        "/kubepods/besteffort/podf8a694f2-7c08-11e9-98da-000c29077430/c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903/kube-proxy",
        Some("c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903"),
        None,
        Some("f8a694f2-7c08-11e9-98da-000c29077430"),
    ),
    case(
        "seen from a private cgroup namespace (containerd, v2)",
        "/../../kubepods-besteffort-pod0043435f_1854_4327_b76b_730f681a781d.slice/cri-containerd-01fd96f7ad292b02a8317cde4ecb8c7ef3cc06ffdd113f13410e0837eb2b2a20.scope",
        Some("01fd96f7ad292b02a8317cde4ecb8c7ef3cc06ffdd113f13410e0837eb2b2a20"),
        Some(Containerd),
        Some("0043435f-1854-4327-b76b-730f681a781d"),
    ),
    case(
        "static pod: the UID is the 32-hex config hash (shape only; ids made up)",
        "/kubepods/burstable/pod6a8a8ef2c4e1b4d0b64fd2c2d3c8e3a4/0e4f1c0f1a4ef2b6a9b0b1c1c3e0ce5a8d9a2b6b0ff1b8b9a8f1a0a7c6e5d4c3",
        Some("0e4f1c0f1a4ef2b6a9b0b1c1c3e0ce5a8d9a2b6b0ff1b8b9a8f1a0a7c6e5d4c3"),
        None,
        Some("6a8a8ef2c4e1b4d0b64fd2c2d3c8e3a4"),
    ),
    // CRI-O
    case(
        "CRI-O, systemd driver, cgroup v2 (OpenShift)",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d.scope",
        Some("a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d"),
        Some(CriO),
        Some("2c9f8a79-5391-454b-88cb-86190881cb96"),
    ),
    case(
        "CRI-O, systemd driver, cgroup v1",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod63b3ebfc_2890_11e9_8154_16bf8ef8d9dc.slice/crio-17d8c9eacc629f9945f304d89e9708c0c619649a484a215b240628319548a09f.scope",
        Some("17d8c9eacc629f9945f304d89e9708c0c619649a484a215b240628319548a09f"),
        Some(CriO),
        Some("63b3ebfc-2890-11e9-8154-16bf8ef8d9dc"),
    ),
    case(
        "CRI-O, cgroupfs driver",
        "/kubepods/besteffort/pod63b3ebfc-2890-11e9-8154-16bf8ef8d9dc/crio-73bfe475650de66df8e2affdc98d440dcbe84f8df83b6f75a68a82eb7026136a",
        Some("73bfe475650de66df8e2affdc98d440dcbe84f8df83b6f75a68a82eb7026136a"),
        Some(CriO),
        Some("63b3ebfc-2890-11e9-8154-16bf8ef8d9dc"),
    ),
    case(
        "CRI-O, guaranteed QoS",
        "/kubepods.slice/kubepods-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-f93ee491b8ed2680d5a909eb098b14a9430173b57ca1c4efedd8768566d67e8e.scope",
        Some("f93ee491b8ed2680d5a909eb098b14a9430173b57ca1c4efedd8768566d67e8e"),
        Some(CriO),
        Some("2c9f8a79-5391-454b-88cb-86190881cb96"),
    ),
    case(
        "CRI-O's conmon is not the container's workload",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-conmon-a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d.scope",
        None,
        None,
        None,
    ),
    // Docker
    case(
        "Docker, systemd driver (CentOS, v1)",
        "/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope",
        Some("9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"),
        Some(Docker),
        None,
    ),
    case(
        "Docker, cgroupfs driver (Ubuntu, v1)",
        "/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30",
        Some("31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30"),
        Some(Docker),
        None,
    ),
    case(
        "Docker in Docker (RancherOS)",
        "/docker/a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413/docker/ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a",
        Some("ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a"),
        Some(Docker),
        None,
    ),
    case(
        "Kubernetes with Docker, systemd driver",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod045b1e35_7f13_11e7_ac42_0050568ffca0.slice/docker-b5b6f2da8008be266864f896f93789762b2ce50792114a5c5f2cc3315af0bc70.scope",
        Some("b5b6f2da8008be266864f896f93789762b2ce50792114a5c5f2cc3315af0bc70"),
        Some(Docker),
        Some("045b1e35-7f13-11e7-ac42-0050568ffca0"),
    ),
    case(
        "Kubernetes with Docker, cgroupfs driver",
        "/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c",
        Some("cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c"),
        None,
        Some("74ba62da-1a3d-11e7-bb11-080027cb0e22"),
    ),
    // podman
    case(
        "podman rootful, systemd driver, v2",
        "/machine.slice/libpod-8e363eb2287da4ccc9f52ffc5de11252ac5fe707e3ddb917a3c0bdf9bb64165b.scope",
        Some("8e363eb2287da4ccc9f52ffc5de11252ac5fe707e3ddb917a3c0bdf9bb64165b"),
        Some(Podman),
        None,
    ),
    case(
        "podman rootful with --cgroups=split",
        "/machine.slice/libpod-06dc5f321aad8726aa26559f16ec203bc099245bc44894b14a89fc02b022d1d5.scope/container",
        Some("06dc5f321aad8726aa26559f16ec203bc099245bc44894b14a89fc02b022d1d5"),
        Some(Podman),
        None,
    ),
    case(
        "podman rootless",
        "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-3f05ee050f82c0145f1d88c94269c39dff0f07dbf8bba20aafd54b3a75dcaecc.scope/container",
        Some("3f05ee050f82c0145f1d88c94269c39dff0f07dbf8bba20aafd54b3a75dcaecc"),
        Some(Podman),
        None,
    ),
    case(
        "podman under a quadlet unit",
        "/system.slice/app.service/libpod-payload-8e363eb2287da4ccc9f52ffc5de11252ac5fe707e3ddb917a3c0bdf9bb64165b",
        Some("8e363eb2287da4ccc9f52ffc5de11252ac5fe707e3ddb917a3c0bdf9bb64165b"),
        Some(Podman),
        None,
    ),
    case(
        "podman's conmon",
        "/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope",
        None,
        None,
        None,
    ),
    case(
        "podman, cgroupfs driver (v1 and hybrid hosts without systemd)",
        "/libpod_parent/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5",
        Some("24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5"),
        Some(Podman),
        None,
    ),
    case(
        "podman pod, systemd driver (shape only; ids made up)",
        "/machine.slice/machine-libpod_pod_5c1e0b8a3f0d4b7c9e2a1f6d8b3c0e9a7f5d2b4c6e8a0f1d3b5c7e9a2f4d6b8c.slice/libpod-dd0f37cbda8ed4f37aa0b5f4e2b8b1c1a0d5e4f3c2b1a09f8e7d6c5b4a3f2e1d.scope",
        Some("dd0f37cbda8ed4f37aa0b5f4e2b8b1c1a0d5e4f3c2b1a09f8e7d6c5b4a3f2e1d"),
        Some(Podman),
        None,
    ),
    // Not containers
    case("host root", "/", None, None, None),
    case(
        "a systemd service",
        "/system.slice/sshd.service",
        None,
        None,
        None,
    ),
    case(
        "a login session",
        "/user.slice/user-1000.slice/session-3.scope",
        None,
        None,
        None,
    ),
    case(
        "the container runtime's own service",
        "/system.slice/containerd.service",
        None,
        None,
        None,
    ),
    case(
        "a pod's cgroup itself (the kubelet's view)",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod63b3ebfc_2890_11e9_8154_16bf8ef8d9dc.slice",
        None,
        None,
        Some("63b3ebfc-2890-11e9-8154-16bf8ef8d9dc"),
    ),
    case(
        "the QoS slice is not a pod",
        "/kubepods.slice/kubepods-besteffort.slice",
        None,
        None,
        None,
    ),
];

#[test]
fn every_sample_layout() {
    for c in CASES {
        let got = parse_path(c.path);
        assert_eq!(
            got.container_id.as_deref(),
            c.id,
            "container id of {}",
            c.what
        );
        assert_eq!(got.runtime, c.runtime, "runtime of {}", c.what);
        assert_eq!(got.pod_uid.as_deref(), c.pod, "pod of {}", c.what);
    }
}

#[test]
fn short_or_non_hex_ids_are_not_containers() {
    for path in [
        "/docker/deadbeef",
        "/system.slice/docker-compose@web.service",
        "/machine.slice/libpod-zz63eb2287da4ccc9f52ffc5de11252ac5fe707e3ddb917a3c0bdf9bb64165b.scope",
        "/kubepods/burstable/podnot-a-uid/abc",
    ] {
        assert_eq!(parse_path(path), CgroupInfo::default(), "{path}");
    }
}

/// A cgroup v1 node (Kubernetes with containerd, cgroupfs): every controller line names the
/// container; the `0::/` line of a v1 kernel that also mounts nothing unified says nothing.
const V1_KUBEPODS: &str = "\
12:pids:/kubepods/besteffort/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d
11:blkio:/kubepods/besteffort/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d
3:rdma:/
2:cpuset,cpu,cpuacct,memory,net_cls,net_prio,hugetlb:/kubepods/besteffort/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d
1:name=systemd:/kubepods/besteffort/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d
";

/// A hybrid node where the runtime only uses v1 controllers: the unified line is systemd's
/// (here the runtime's service), the container shows in the v1 lines.
const HYBRID_V1_RUNTIME: &str = "\
10:pids:/
9:memory:/
6:cpuset:/
2:cpu,cpuacct:/
1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod70565f42_b704_42f2_83fe_1ffb77a67800.slice/cri-containerd-a678b5127d3f1a1bfd029818c628a8cd106d7b873ff64cd6bfaa7022579cbab5.scope
0::/system.slice/containerd.service
";

/// A hybrid node where the unified hierarchy carries the container (systemd ≥ 233 with the
/// runtime's scope): the unified path wins.
const HYBRID_UNIFIED: &str = "\
11:memory:/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
1:name=systemd:/machine.slice/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
0::/machine.slice/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
";

/// podman 4.3 with runc and the cgroupfs manager on a hybrid host without systemd (this
/// project's own machine): runc places the container in every v1 controller and in the
/// unified hierarchy.
const HYBRID_PODMAN_CGROUPFS: &str = "\
9:name=systemd:/libpod_parent/libpod-ce1ed2d59e8ea458b50d11d93a3f190cf32fd58b0930f6e3e730a78533592459
8:pids:/libpod_parent/libpod-ce1ed2d59e8ea458b50d11d93a3f190cf32fd58b0930f6e3e730a78533592459
4:memory:/libpod_parent/libpod-ce1ed2d59e8ea458b50d11d93a3f190cf32fd58b0930f6e3e730a78533592459
1:cpu:/libpod_parent/libpod-ce1ed2d59e8ea458b50d11d93a3f190cf32fd58b0930f6e3e730a78533592459
0::/libpod_parent/libpod-ce1ed2d59e8ea458b50d11d93a3f190cf32fd58b0930f6e3e730a78533592459
";

const V2_ONLY: &str = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope\n";

#[test]
fn proc_cgroup_files_of_v1_v2_and_hybrid_hosts() {
    let v1 = parse_proc_cgroup(V1_KUBEPODS);
    assert_eq!(v1.unified, None);
    assert_eq!(v1.v1.len(), 5);
    let c = v1.container();
    assert_eq!(
        c.container_id.as_deref(),
        Some("da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d")
    );
    assert_eq!(
        c.pod_uid.as_deref(),
        Some("1fe19bf5-e8ef-11e8-900c-52daee5a874d")
    );

    let hybrid = parse_proc_cgroup(HYBRID_V1_RUNTIME);
    assert_eq!(
        hybrid.unified.as_deref(),
        Some("/system.slice/containerd.service")
    );
    let c = hybrid.container();
    assert_eq!(c.runtime, Some(Containerd));
    assert_eq!(
        c.pod_uid.as_deref(),
        Some("70565f42-b704-42f2-83fe-1ffb77a67800")
    );

    let c = parse_proc_cgroup(HYBRID_UNIFIED).container();
    assert_eq!(c.runtime, Some(Podman));
    assert_eq!(
        c.container_id.as_deref(),
        Some("24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5")
    );

    let c = parse_proc_cgroup(HYBRID_PODMAN_CGROUPFS).container();
    assert_eq!(c.runtime, Some(Podman));
    assert_eq!(
        c.container_id.as_deref(),
        Some("ce1ed2d59e8ea458b50d11d93a3f190cf32fd58b0930f6e3e730a78533592459")
    );
    assert_eq!(c.pod_uid, None);

    let c = parse_proc_cgroup(V2_ONLY).container();
    assert_eq!(
        c.pod_uid.as_deref(),
        Some("dd1bf9d1-241d-47f5-8e25-12de83135812")
    );

    // A host process on any layout: nothing.
    let host = parse_proc_cgroup("12:pids:/\n1:name=systemd:/init.scope\n0::/init.scope\n");
    assert!(host.container().is_empty());
    assert!(parse_proc_cgroup("").container().is_empty());
    assert!(parse_proc_cgroup("garbage\n::\n").container().is_empty());
}
